//! Snapshot ids: `YYYY-MM-DD-HH-MM` in UTC, with `-N` (N >= 2) for a second snapshot in one minute.
//! Ids sort as time; within a minute by their suffix.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};

const TIME_FORMAT: &str = "%Y-%m-%d-%H-%M";
/// Length of the time part of an id, `YYYY-MM-DD-HH-MM`.
const TIME_LEN: usize = 16;

/// A snapshot id. Orders by time, then by same-minute suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId {
    time: DateTime<Utc>,
    /// 1 for the unsuffixed id, N for the `-N` suffix.
    seq: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid snapshot id {id:?}: expected YYYY-MM-DD-HH-MM (UTC), optionally followed by -N")]
pub struct ParseIdError {
    id: String,
}

impl SnapshotId {
    /// The id of the minute `time` falls in, with sequence `seq` (1 = no suffix).
    pub fn new(time: DateTime<Utc>, seq: u32) -> Self {
        let minute = time.with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or(time);
        SnapshotId {
            time: minute,
            seq: seq.max(1),
        }
    }

    /// The UTC minute this snapshot was started in.
    pub fn time(&self) -> DateTime<Utc> {
        self.time
    }

    /// 1 for the unsuffixed id, N for `-N`.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The same minute with the next suffix.
    pub fn next_in_minute(&self) -> Self {
        SnapshotId {
            time: self.time,
            seq: self.seq + 1,
        }
    }

    /// The first id for `time` that is not in `taken`.
    pub fn first_free(time: DateTime<Utc>, taken: &[SnapshotId]) -> Self {
        let mut id = SnapshotId::new(time, 1);
        while taken.contains(&id) {
            id = id.next_in_minute();
        }
        id
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.time.format(TIME_FORMAT))?;
        if self.seq > 1 {
            write!(f, "-{}", self.seq)?;
        }
        Ok(())
    }
}

impl FromStr for SnapshotId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseIdError { id: s.to_string() };
        if s.len() < TIME_LEN || !s.is_char_boundary(TIME_LEN) {
            return Err(err());
        }
        let (time_part, suffix) = s.split_at(TIME_LEN);
        // chrono's parser is lenient about widths; insist on the canonical form.
        let canonical = time_part
            .bytes()
            .enumerate()
            .all(|(i, b)| matches!(i, 4 | 7 | 10 | 13) == (b == b'-') && (b == b'-' || b.is_ascii_digit()));
        if !canonical {
            return Err(err());
        }
        let naive = NaiveDateTime::parse_from_str(time_part, TIME_FORMAT).map_err(|_| err())?;
        let seq = match suffix {
            "" => 1,
            _ => {
                let digits = suffix.strip_prefix('-').ok_or_else(err)?;
                if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                let seq: u32 = digits.parse().map_err(|_| err())?;
                if seq < 2 {
                    return Err(err());
                }
                seq
            }
        };
        Ok(SnapshotId {
            time: naive.and_utc(),
            seq,
        })
    }
}

impl serde::Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SnapshotId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid test time")
    }

    #[test]
    fn formats_and_parses_round_trip() {
        let id = SnapshotId::new(at(2026, 2, 27, 14, 0, 37), 1);
        assert_eq!(id.to_string(), "2026-02-27-14-00");
        assert_eq!("2026-02-27-14-00".parse::<SnapshotId>().expect("parses"), id);
        let second = id.next_in_minute();
        assert_eq!(second.to_string(), "2026-02-27-14-00-2");
        assert_eq!(second.to_string().parse::<SnapshotId>().expect("parses"), second);
        assert_eq!("2026-02-27-14-00-12".parse::<SnapshotId>().expect("parses").seq(), 12);
    }

    #[test]
    fn orders_as_time_then_suffix() {
        let mut ids: Vec<SnapshotId> = [
            "2026-02-27-14-00-10",
            "2026-02-27-14-20",
            "2026-02-27-14-00-2",
            "2025-12-31-23-40",
            "2026-02-27-14-00",
        ]
        .iter()
        .map(|s| s.parse().expect("valid"))
        .collect();
        ids.sort();
        let shown: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "2025-12-31-23-40",
                "2026-02-27-14-00",
                "2026-02-27-14-00-2",
                "2026-02-27-14-00-10",
                "2026-02-27-14-20"
            ]
        );
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "2026-02-27",
            "2026-2-27-14-00",
            "2026-02-27-14-0x",
            "2026-02-30-14-00",
            "2026-02-27-24-00",
            "2026-02-27-14-00-",
            "2026-02-27-14-00-1",
            "2026-02-27-14-00-01",
            "2026-02-27-14-00-a",
            "2026-02-27-14-00/..",
            "2026_02_27_14_00",
            "+2026-02-27-14-0",
        ] {
            let err = bad.parse::<SnapshotId>().expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn first_free_skips_taken_ids() {
        let t = at(2026, 2, 27, 14, 0, 5);
        let taken = [SnapshotId::new(t, 1), SnapshotId::new(t, 2)];
        assert_eq!(SnapshotId::first_free(t, &taken).to_string(), "2026-02-27-14-00-3");
        assert_eq!(SnapshotId::first_free(t, &[]).to_string(), "2026-02-27-14-00");
    }
}
