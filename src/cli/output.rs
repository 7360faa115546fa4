//! How the CLI prints: `error:`/`hint:` lines on stderr, tables and JSON on stdout.

use std::io::Write;

/// Prints `error: …` (and `hint: …` lines) to stderr. A message that already carries
/// `hint:` lines keeps them as separate lines.
pub fn error(message: &str, hint: Option<&str>) {
    let mut stderr = std::io::stderr().lock();
    let mut lines = message.trim().lines();
    let first = lines.next().unwrap_or("unknown error");
    let _ = writeln!(stderr, "error: {first}");
    for line in lines {
        let line = line.trim();
        if line.starts_with("hint:") {
            let _ = writeln!(stderr, "{line}");
        } else if !line.is_empty() {
            let _ = writeln!(stderr, "  {line}");
        }
    }
    if let Some(hint) = hint {
        let _ = writeln!(stderr, "hint: {hint}");
    }
}

/// Prints rows as an aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// A field of a JSON reply as text: strings as they are, other values as JSON, and `missing`
/// for an absent or null field.
pub fn field(v: &serde_json::Value, key: &str, missing: &str) -> String {
    match v.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => missing.to_string(),
        Some(other) => other.to_string(),
    }
}

/// Human size: 1.2 GB, 34 MB, 5 kB.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::size(999), "999 B");
        assert_eq!(super::size(151_000_000), "151.0 MB");
    }
}
