//! [`ConfigError`]: a configuration error with its place in the file.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration error with its place in the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}{message}", location(.file, .line, .column), field_prefix(.field))]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place (the file is unreadable).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `vms.pbx1.host`.
    pub field: Option<String>,
    pub message: String,
}

fn location(file: &Path, line: &usize, column: &usize) -> String {
    if *line == 0 {
        format!("{}: ", file.display())
    } else {
        format!("{}:{line}:{column}: ", file.display())
    }
}

fn field_prefix(field: &Option<String>) -> String {
    field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
}

/// 1-based line and column of a byte offset.
pub(super) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// Span of the value at a dotted path (`["vms", "pbx1", "host"]`, array
/// elements by index), or of the nearest ancestor that exists.
pub(super) fn span_of(src: &str, path: &[String]) -> Option<Range<usize>> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(src).ok()?;
    let mut best = root.span();
    let mut cur: Option<&DeValue> = None;
    let mut table = Some(root.get_ref());
    for seg in path {
        let next = match (table, cur) {
            (Some(t), _) => t.get(seg.as_str()),
            (None, Some(DeValue::Array(a))) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        let Some(next) = next else { break };
        best = next.span();
        cur = Some(next.get_ref());
        table = next.get_ref().as_table();
    }
    Some(best)
}
