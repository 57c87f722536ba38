//! Which paths of the state directory are never archived, in gitignore syntax.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

#[derive(Debug, thiserror::Error)]
#[error("exclude pattern {pattern:?} is not valid gitignore syntax: {source}")]
pub struct ExcludeError {
    pattern: String,
    source: ignore::Error,
}

impl ExcludeError {
    /// The pattern that failed to compile.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

/// A compiled exclude list, matched against paths relative to the state directory.
#[derive(Debug, Clone)]
pub struct Excludes {
    matcher: Gitignore,
}

impl Excludes {
    /// Compiles `patterns`; `root` is the state directory they are anchored at.
    pub fn new(root: &Path, patterns: &[String]) -> Result<Excludes, ExcludeError> {
        let mut builder = GitignoreBuilder::new(root);
        for pattern in patterns {
            builder.add_line(None, pattern).map_err(|source| ExcludeError {
                pattern: pattern.clone(),
                source,
            })?;
        }
        let matcher = builder.build().map_err(|source| ExcludeError {
            pattern: patterns.join(", "),
            source,
        })?;
        Ok(Excludes { matcher })
    }

    /// True when `relative` (a path under the root) or one of its parents is excluded.
    pub fn is_excluded(&self, relative: &Path, is_dir: bool) -> bool {
        self.matcher.matched_path_or_any_parents(relative, is_dir).is_ignore()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_EXCLUDES;

    fn defaults() -> Excludes {
        let patterns: Vec<String> = DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect();
        Excludes::new(Path::new("/state"), &patterns).expect("defaults compile")
    }

    #[test]
    fn default_excludes_match_what_they_should() {
        let ex = defaults();
        let excluded = [
            (".env", false),
            ("db/app.lock", false),
            ("a/b/c.tmp", false),
            ("gateway.sock", false),
            ("run/openclaw.pid", false),
        ];
        for (path, is_dir) in excluded {
            assert!(ex.is_excluded(Path::new(path), is_dir), "{path} should be excluded");
        }
        let kept = [
            ("agents/.env", false),
            ("env", false),
            ("sessions/a.jsonl", false),
            ("memory.sqlite-wal", false),
            ("locks", true),
            ("node_modules", false),
            // Plugins: OpenClaw does not reinstall them at start.
            ("node_modules", true),
            ("npm/projects/@acme%2Fplugin/node_modules", true),
            ("npm/projects/@acme%2Fplugin/node_modules/x/index.js", false),
            ("git/plugin/node_modules", true),
            ("extensions/legacy/node_modules", true),
            ("credentials/telegram.json", false),
        ];
        for (path, is_dir) in kept {
            assert!(!ex.is_excluded(Path::new(path), is_dir), "{path} should be kept");
        }
    }

    #[test]
    fn negation_and_anchoring_follow_gitignore() {
        let patterns = vec!["*.log".to_string(), "!keep.log".to_string(), "/cache/".to_string()];
        let ex = Excludes::new(Path::new("/state"), &patterns).expect("compiles");
        assert!(ex.is_excluded(Path::new("a/b.log"), false));
        assert!(!ex.is_excluded(Path::new("a/keep.log"), false));
        assert!(ex.is_excluded(Path::new("cache/x"), false));
        assert!(!ex.is_excluded(Path::new("sub/cache/x"), false));
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let err = Excludes::new(Path::new("/state"), &["a[z-a]".to_string()]).expect_err("invalid glob");
        assert_eq!(err.pattern(), "a[z-a]");
        assert!(err.to_string().contains("\"a[z-a]\""), "{err}");
    }
}
