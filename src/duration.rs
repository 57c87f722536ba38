//! Durations as written in the config file: a whole number and one unit of `s m h d w`
//! (`90s`, `20m`, `24h`, `7d`, `4w`). Pure; shared by every config section.

use std::time::Duration;

const UNITS: [(char, u64); 5] = [('w', 604_800), ('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{text:?} is not a duration: expected a whole number and one unit of s, m, h, d, w (for example \"20m\" or \"7d\")"
)]
pub struct ParseDurationError {
    text: String,
}

/// Parses `"<n><unit>"`; `"0s"` is allowed, validation of ranges is the caller's.
pub fn parse(text: &str) -> Result<Duration, ParseDurationError> {
    let err = || ParseDurationError { text: text.to_string() };
    let trimmed = text.trim();
    let unit = trimmed.chars().last().ok_or_else(err)?;
    let seconds_per_unit = UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, s)| *s)
        .ok_or_else(err)?;
    let number = &trimmed[..trimmed.len() - unit.len_utf8()];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let count: u64 = number.parse().map_err(|_| err())?;
    count
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(err)
}

/// Formats in the largest unit up to days that divides the duration exactly (`86400s` -> `"1d"`);
/// weeks are written as days (`"14d"`), which reads better next to `"7d"` and `"30d"`.
pub fn format(duration: Duration) -> String {
    let secs = duration.as_secs();
    UNITS[1..]
        .iter()
        .find(|(_, per)| secs.is_multiple_of(*per) && secs > 0)
        .map(|(unit, per)| format!("{}{unit}", secs / per))
        .unwrap_or_else(|| format!("{secs}s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse("2w"), Ok(Duration::from_secs(1_209_600)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "20",
            "m",
            "-5m",
            "1.5h",
            "20 m",
            "20min",
            "5y",
            "99999999999999999999w",
            "１m",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format(Duration::from_secs(86_400)), "1d");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(1_209_600)), "14d");
        assert_eq!(format(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(format(Duration::ZERO), "0s");
        for text in ["20m", "6h", "7d", "45s"] {
            assert_eq!(format(parse(text).expect("valid")), text);
        }
    }
}
