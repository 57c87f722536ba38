//! Which of a snapshot's paths a restore writes, and where, and what a target held before: pure
//! policy, table-tested.

/// What is at a restore target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Absent,
    Empty,
    NonEmpty,
}

/// What a restore into the configured state paths does with a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPlan {
    /// Paths to restore, in config order: (the path's name in the snapshot, its configured name).
    pub restore: Vec<(String, String)>,
    /// Configured paths the snapshot does not hold (taken before they were configured): left as
    /// they are.
    pub missing: Vec<String>,
}

/// Plans a restore of the snapshot holding `held` into the configured paths `configured`, or
/// only the path `only`. A snapshot path the config does not name is refused: restoring the rest
/// would make the next snapshot drop it from the set without anyone deciding so. A snapshot from
/// before `[[state.paths]]` (format 1, or format 2 with the one path `state`) goes into the first
/// configured path when none is named `state`: the one directory it holds was that path.
pub fn plan(held: &[String], configured: &[String], only: Option<&str>) -> Result<PathPlan, String> {
    let legacy = held.len() == 1
        && held[0] == crate::config::SHORTHAND_PATH_NAME
        && !configured.iter().any(|c| c == crate::config::SHORTHAND_PATH_NAME);
    if legacy && let Some(first) = configured.first() {
        let mapped = [first.clone()];
        let planned = plan(&mapped, configured, only)?;
        return Ok(PathPlan {
            restore: planned
                .restore
                .into_iter()
                .map(|(_, name)| (held[0].clone(), name))
                .collect(),
            missing: planned.missing,
        });
    }
    let listed = |names: &[String]| names.join(", ");
    if let Some(only) = only {
        if !configured.iter().any(|c| c == only) {
            return Err(format!(
                "the config has no state path named {only:?} (it has: {})",
                listed(configured)
            ));
        }
        if !held.iter().any(|h| h == only) {
            return Err(format!(
                "the snapshot holds no path {only:?} (it holds: {})",
                listed(held)
            ));
        }
        return Ok(PathPlan {
            restore: vec![(only.to_string(), only.to_string())],
            missing: Vec::new(),
        });
    }
    if let Some(stray) = held.iter().find(|h| !configured.contains(h)) {
        return Err(format!(
            "the snapshot holds path {stray:?}, which the config does not name (it has: {}); add it to \
             [[state.paths]], or restore the snapshot with --to DIR and move what you need by hand",
            listed(configured)
        ));
    }
    let restore: Vec<(String, String)> = configured
        .iter()
        .filter(|c| held.contains(c))
        .map(|c| (c.clone(), c.clone()))
        .collect();
    if restore.is_empty() {
        return Err(format!(
            "the snapshot holds no path the config names (it holds: {})",
            listed(held)
        ));
    }
    let missing = configured.iter().filter(|c| !held.contains(c)).cloned().collect();
    Ok(PathPlan { restore, missing })
}

/// Plans a restore of the snapshot holding `held` into `DIR` (`--to`): every path it holds (or
/// `only`), each at `DIR/<name>`, except that one path alone goes to `DIR` itself. Returns each
/// path's name and whether it goes to `DIR/<name>`.
pub fn plan_to_dir(held: &[String], only: Option<&str>) -> Result<Vec<(String, bool)>, String> {
    let chosen: Vec<String> = match only {
        Some(only) if held.iter().any(|h| h == only) => vec![only.to_string()],
        Some(only) => {
            return Err(format!(
                "the snapshot holds no path {only:?} (it holds: {})",
                held.join(", ")
            ));
        }
        None => held.to_vec(),
    };
    if chosen.is_empty() {
        return Err("the snapshot holds no path".into());
    }
    let nested = chosen.len() > 1;
    Ok(chosen.into_iter().map(|name| (name, nested)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// (held, configured, only) -> the paths restored and missing, or the start of the refusal.
    type Case<'a> = (
        Vec<String>,
        Vec<String>,
        Option<&'a str>,
        Result<(Vec<&'a str>, Vec<&'a str>), &'a str>,
    );

    #[test]
    fn a_restore_into_the_state_takes_what_both_name_and_refuses_strays() {
        let three = names(&["config", "workspace", "auth"]);
        // (held, configured, only) -> restore, missing, or the start of the refusal
        let cases: Vec<Case> = vec![
            (
                three.clone(),
                three.clone(),
                None,
                Ok((vec!["config", "workspace", "auth"], vec![])),
            ),
            // An older snapshot, from before the workspace was configured.
            (
                names(&["config", "auth"]),
                three.clone(),
                None,
                Ok((vec!["config", "auth"], vec!["workspace"])),
            ),
            (
                three.clone(),
                names(&["config", "auth"]),
                None,
                Err("the snapshot holds path \"workspace\""),
            ),
            (
                names(&["state", "cache"]),
                three.clone(),
                None,
                Err("the snapshot holds path \"state\""),
            ),
            (names(&["state"]), names(&["state"]), None, Ok((vec!["state"], vec![]))),
            (
                three.clone(),
                three.clone(),
                Some("workspace"),
                Ok((vec!["workspace"], vec![])),
            ),
            (
                three.clone(),
                three.clone(),
                Some("cache"),
                Err("the config has no state path named \"cache\""),
            ),
            (
                names(&["config"]),
                three.clone(),
                Some("auth"),
                Err("the snapshot holds no path \"auth\""),
            ),
            (
                vec![],
                three.clone(),
                None,
                Err("the snapshot holds no path the config names"),
            ),
        ];
        for (held, configured, only, want) in cases {
            let got = plan(&held, &configured, only);
            match want {
                Ok((restore, missing)) => assert_eq!(
                    got,
                    Ok(PathPlan {
                        restore: restore.iter().map(|n| (n.to_string(), n.to_string())).collect(),
                        missing: names(&missing)
                    }),
                    "{held:?} into {configured:?} only {only:?}"
                ),
                Err(start) => {
                    let err = got.expect_err("refused");
                    assert!(err.starts_with(start), "{held:?} into {configured:?}: {err}");
                }
            }
        }
    }

    #[test]
    fn a_snapshot_from_before_the_paths_goes_into_the_first_path() {
        let three = names(&["config", "workspace", "auth"]);
        assert_eq!(
            plan(&names(&["state"]), &three, None),
            Ok(PathPlan {
                restore: vec![("state".into(), "config".into())],
                missing: names(&["workspace", "auth"]),
            })
        );
        assert_eq!(
            plan(&names(&["state"]), &three, Some("config")).map(|p| p.restore),
            Ok(vec![("state".into(), "config".into())])
        );
        assert!(plan(&names(&["state"]), &three, Some("workspace")).is_err());
        // A config that names `state` takes it as it is.
        assert_eq!(
            plan(&names(&["state"]), &names(&["state", "workspace"]), None).map(|p| p.restore),
            Ok(vec![("state".into(), "state".into())])
        );
    }

    #[test]
    fn a_restore_to_a_directory_nests_only_several_paths() {
        let three = names(&["config", "workspace", "auth"]);
        assert_eq!(
            plan_to_dir(&three, None),
            Ok(vec![
                ("config".into(), true),
                ("workspace".into(), true),
                ("auth".into(), true)
            ])
        );
        assert_eq!(plan_to_dir(&names(&["state"]), None), Ok(vec![("state".into(), false)]));
        assert_eq!(plan_to_dir(&three, Some("auth")), Ok(vec![("auth".into(), false)]));
        assert!(plan_to_dir(&three, Some("cache")).is_err());
        assert!(plan_to_dir(&[], None).is_err());
    }
}
