//! Turning a TOML or serde error into a message a person can act on: TOML's own layout (the
//! line, a caret under the value) is kept, the dotted key is named, Rust type names become
//! words, and an unknown key gets the nearest known one ("did you mean `prefix`?"). Pure
//! functions of the config text and the error, tested as tables.

/// The message for a `toml::de::Error` met while reading `text`.
pub fn parse_error(text: &str, error: &toml::de::Error) -> String {
    let mut message = plain_types(error.to_string().trim_end());
    if let Some(span) = error.span()
        && let Some(key) = key_at(text, span.start)
    {
        message = format!("in `{key}`: {message}");
    }
    if let Some(hint) = suggestion(error.message()) {
        message.push('\n');
        message.push_str(&hint);
    }
    message
}

/// The dotted key (`snapshot.compression_level`) whose value starts at or spans `offset`: the
/// key on that line, under the last `[table]` header above it.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text.get(line_start..line_end)?.trim();
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    if line.starts_with('[') {
        return Some(line.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() {
        return None;
    }
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}

/// `expected i32` → `expected an integer`, and the like, for the types the config uses.
pub fn plain_types(message: &str) -> String {
    const WORDS: [(&str, &str); 9] = [
        ("expected i32", "expected an integer"),
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected i64", "expected an integer"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected a list, such as [\"a\", \"b\"]"),
    ];
    WORDS
        .iter()
        .fold(message.to_string(), |text, (from, to)| text.replace(from, to))
}

/// "did you mean `prefix`?" for serde's `unknown field `prefx`, expected one of `bucket`, …`.
pub fn suggestion(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let nearest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .filter(|(distance, k)| *distance <= 2.max(k.len() / 3))
        .min()?;
    Some(format!("did you mean `{}`?", nearest.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_found_from_the_error_position() {
        let text = "[s3]\nbucket = \"b-1\"\n\n[snapshot]\ncompression_level = \"high\"\n";
        let offset = text.find("\"high\"").expect("value");
        assert_eq!(key_at(text, offset).as_deref(), Some("snapshot.compression_level"));
        assert_eq!(key_at(text, 0).as_deref(), Some("s3"));
        let top = "stray = 1\n";
        assert_eq!(key_at(top, 8).as_deref(), Some("stray"));
    }

    #[test]
    fn unknown_keys_get_the_nearest_known_one() {
        let cases = [
            (
                "unknown field `prefx`, expected one of `bucket`, `prefix`, `region`",
                Some("`prefix`"),
            ),
            (
                "unknown field `snapshots`, expected one of `state`, `s3`, `snapshot`",
                Some("`snapshot`"),
            ),
            ("unknown field `bukket`, expected `bucket`", Some("`bucket`")),
            ("unknown field `zzzzzz`, expected one of `bucket`, `prefix`", None),
            ("invalid type: string \"x\", expected i32", None),
        ];
        for (message, expected) in cases {
            let hint = suggestion(message);
            match expected {
                Some(key) => assert!(hint.as_deref().is_some_and(|h| h.contains(key)), "{message}: {hint:?}"),
                None => assert_eq!(hint, None, "{message}"),
            }
        }
    }

    #[test]
    fn rust_type_names_become_words() {
        assert_eq!(
            plain_types("invalid type: string \"high\", expected i32"),
            "invalid type: string \"high\", expected an integer"
        );
    }
}
