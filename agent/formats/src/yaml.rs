//! Strict YAML reading with errors that name the source, line and column.

use serde::de::DeserializeOwned;
use std::fmt;

/// A YAML document that did not parse into the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where the text came from: a path, or a name such as `<embedded default>`.
    pub source_name: String,
    /// 1-based line of the offending item, when the parser knows it.
    pub line: Option<usize>,
    /// 1-based column of the offending item, when the parser knows it.
    pub column: Option<usize>,
    /// The parser's message, without the location.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.source_name, self.message),
            _ => write!(f, "{}: {}", self.source_name, self.message),
        }
    }
}

impl std::error::Error for YamlError {}

/// Parses `text` (read from `source_name`) into `T`. Types read this way deny
/// unknown fields, so a misspelt key is an error with its position.
pub fn from_str<T: DeserializeOwned>(source_name: &str, text: &str) -> Result<T, YamlError> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        let loc = e.location();
        let mut message = e.to_string();
        // serde_yaml appends " at line L column C"; we print the position ourselves.
        if let Some(loc) = &loc {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_string();
            }
        }
        YamlError {
            source_name: source_name.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Small {
        name: String,
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let err = from_str::<Small>("spec.yaml", "name: x\nnmae: y\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(err.column, Some(1));
        assert!(err.message.contains("unknown field `nmae`"), "{err}");
        assert!(err.to_string().starts_with("spec.yaml:2:1: "), "{err}");
    }
}
