//! How dead-letter records are shown: a table for people (long fields cut to fit a line) or
//! one JSON object per line with every field, untruncated. Rows stream out as they are read,
//! so a large DLQ needs no memory; columns have fixed widths for the same reason.

use std::io::{self, Write};

use chrono::SecondsFormat;

use super::error::DlqError;
use super::record::DlqRecord;

/// Column widths (characters) of the table; the last column (error) is cut at `ERROR_WIDTH`.
const DLQ_WIDTH: usize = 9;
const TIME_WIDTH: usize = 20; // 2026-11-23T06:00:00Z
const REASON_WIDTH: usize = 19; // unsupported-version
const SOURCE_WIDTH: usize = 28;
const EVENT_WIDTH: usize = 36; // a UUID
const KEYS_WIDTH: usize = 40;
const ERROR_WIDTH: usize = 60;

/// Table or JSON lines on a writer (stdout).
pub struct Printer<W: Write> {
    out: W,
    json: bool,
    header_done: bool,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, json: bool) -> Self {
        Printer {
            out,
            json,
            header_done: false,
        }
    }

    /// Prints one record (the table header comes before the first).
    pub fn record(&mut self, r: &DlqRecord) -> Result<(), DlqError> {
        if self.json {
            let line = serde_json::to_string(r).expect("a DlqRecord always serializes");
            return self.line(&line);
        }
        if !self.header_done {
            self.header_done = true;
            let header = row(&[
                "DLQ",
                "FAILED-AT",
                "REASON",
                "SOURCE",
                "EVENT-ID",
                "KEYS",
                "ERROR",
            ]);
            self.line(&header)?;
        }
        let line = row(&table_cells(r));
        self.line(&line)
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A line of text (a message or summary that belongs on stdout).
    pub fn line(&mut self, s: &str) -> Result<(), DlqError> {
        writeln!(self.out, "{s}").map_err(DlqError::Output)
    }

    pub fn flush(&mut self) -> Result<(), DlqError> {
        self.out.flush().map_err(DlqError::Output)
    }
}

/// Whether an output error only means the reader went away (`dlq list | head`): not a failure.
pub fn is_closed_pipe(e: &DlqError) -> bool {
    matches!(e, DlqError::Output(io) if io.kind() == io::ErrorKind::BrokenPipe)
}

fn row<S: AsRef<str>>(cells: &[S]) -> String {
    let widths = [
        DLQ_WIDTH,
        TIME_WIDTH,
        REASON_WIDTH,
        SOURCE_WIDTH,
        EVENT_WIDTH,
        KEYS_WIDTH,
    ];
    let mut out = String::new();
    for (cell, w) in cells.iter().zip(widths) {
        let cell = cell.as_ref();
        out.push_str(cell);
        let len = cell.chars().count();
        out.push_str(&" ".repeat(w.saturating_sub(len) + 2));
    }
    if let Some(last) = cells.get(widths.len()) {
        out.push_str(last.as_ref());
    }
    out.trim_end().to_string()
}

/// The table's cells for one record, each cut to its column.
pub fn table_cells(r: &DlqRecord) -> [String; 7] {
    let dash = || "-".to_string();
    let keys = match &r.keys {
        Some(keys) => cut_list(keys, KEYS_WIDTH),
        None => r
            .key
            .as_ref()
            .map_or_else(dash, |k| cut(&format!("(record key) {k}"), KEYS_WIDTH)),
    };
    [
        format!("{}/{}", r.dlq_partition, r.dlq_offset),
        r.failed_at
            .map_or_else(dash, |t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        cut(r.reason.as_deref().unwrap_or("-"), REASON_WIDTH),
        cut_left(r.source.as_deref().unwrap_or("-"), SOURCE_WIDTH),
        r.event_id.map_or_else(dash, |e| e.to_string()),
        keys,
        cut(r.error.as_deref().unwrap_or("-"), ERROR_WIDTH),
    ]
}

/// At most `max` characters, the end replaced by `…` when cut; control characters shown as
/// spaces so a hostile key cannot draw on the terminal.
pub fn cut(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= max {
        return clean;
    }
    let mut out: String = clean.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Like [`cut`] but keeps the end (of `topic/partition/offset`, the numbers matter most).
fn cut_left(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return cut(s, max);
    }
    let tail: String = s.chars().skip(n - (max - 1)).collect();
    format!("…{}", cut(&tail, max))
}

/// Keys joined with spaces, cut to `max`, ending with `(+N)` for the keys not shown.
pub fn cut_list(keys: &[String], max: usize) -> String {
    let mut out = String::new();
    for (i, k) in keys.iter().enumerate() {
        let left = keys.len() - i;
        let more = if left > 1 {
            format!(" (+{})", left - 1)
        } else {
            String::new()
        };
        let sep = if out.is_empty() { "" } else { " " };
        let key = cut(k, max);
        // Fits with room for the "(+N)" of what follows?
        if out.chars().count() + sep.len() + key.chars().count() + more.chars().count() <= max {
            out.push_str(sep);
            out.push_str(&key);
            continue;
        }
        if out.is_empty() {
            // Not even the first key fits: cut it and say how many others there are.
            let room = max.saturating_sub(more.chars().count());
            return format!("{}{more}", cut(k, room));
        }
        return format!("{out} (+{left})");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// Cutting keeps short text, marks cut text with …, and neutralises control characters.
    fn cuts_text() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("0123456789abc", 10), "012345678…");
        assert_eq!(cut("a\x1b[2Jb", 10), "a [2Jb");
        assert_eq!(cut_left("some-long-topic-name/3/42", 10), "…name/3/42");
        assert_eq!(cut("ééééé", 3).chars().count(), 3);
    }

    #[test]
    /// Key lists show what fits and count the rest.
    fn cuts_key_lists() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(cut_list(&k(&["a", "b"]), 40), "a b");
        assert_eq!(
            cut_list(&k(&["product:1", "product:2", "product:3"]), 24),
            "product:1 product:2 (+1)"
        );
        let long = "x".repeat(100);
        let s = cut_list(&k(&[&long, "b"]), 20);
        assert_eq!(s.chars().count(), 20);
        assert!(s.ends_with("… (+1)"), "{s}");
        assert!(cut_list(&k(&[&long]), 20).ends_with('…'));
    }
}
