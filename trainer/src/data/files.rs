//! Dataset files, row by row: JSON Lines, or Parquet as HF `datasets` (and pandas, polars,
//! DuckDB) write it. Every row becomes a JSON object, so one parser serves both.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use serde::Serialize;
use serde_json::Value;

/// A dataset file's container format, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line (`.jsonl`, `.ndjson`, and `.json` as `Dataset.to_json` writes it).
    Jsonl,
    Parquet,
}

impl FileFormat {
    pub const EXTENSIONS: [&'static str; 4] = ["jsonl", "ndjson", "json", "parquet"];

    pub fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Parquet => "parquet",
        }
    }
}

/// Where in a file a row is: a 1-based line of a JSONL file, a 0-based row of a Parquet file
/// (as `dataset[i]` numbers it), or the file as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    File,
    Line(usize),
    Row(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File => write!(f, "file"),
            Self::Line(n) => write!(f, "line {n}"),
            Self::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// One bad row (or a problem with the whole file) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub location: Location,
    pub message: String,
}

impl RowProblem {
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        Self { location, message: message.into() }
    }

    pub fn file(message: impl Into<String>) -> Self {
        Self::new(Location::File, message)
    }
}

impl fmt::Display for RowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Calls `each` with every row of the file, in order: the row's JSON, or why it is not JSON,
/// until it answers `Break`. Blank JSONL lines are skipped. A file that cannot be read at all is
/// one file-level problem.
pub fn for_each_row(
    path: &Path,
    mut each: impl FnMut(Location, Result<Value, String>) -> ControlFlow<()>,
) -> Result<(), RowProblem> {
    let format = FileFormat::of(path).ok_or_else(|| {
        RowProblem::file(format!(
            "unsupported file extension: use one of .{} (JSON Lines or Parquet)",
            FileFormat::EXTENSIONS.join(", .")
        ))
    })?;
    let file = std::fs::File::open(path).map_err(|e| RowProblem::file(format!("cannot open: {e}")))?;
    match format {
        FileFormat::Jsonl => {
            let mut reader = BufReader::new(file);
            let mut bytes = Vec::new();
            let mut number = 0;
            loop {
                bytes.clear();
                number += 1;
                if reader.read_until(b'\n', &mut bytes).map_err(|e| RowProblem::file(format!("cannot read: {e}")))? == 0
                {
                    return Ok(());
                }
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    if each(Location::Line(number), Err("not valid UTF-8".into())).is_break() {
                        return Ok(());
                    }
                    continue;
                };
                let text = text.trim();
                if number == 1 && text.starts_with('[') {
                    return Err(RowProblem::file(
                        "this is a JSON array; datasets must be JSON Lines (one object per line), as \
                         `Dataset.to_json` writes them",
                    ));
                }
                if text.is_empty() {
                    continue;
                }
                let row = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"));
                if each(Location::Line(number), row).is_break() {
                    return Ok(());
                }
            }
        }
        FileFormat::Parquet => {
            let reader = SerializedFileReader::new(file)
                .map_err(|e| RowProblem::file(format!("not a readable Parquet file: {e}")))?;
            let rows =
                reader.get_row_iter(None).map_err(|e| RowProblem::file(format!("unreadable Parquet rows: {e}")))?;
            for (i, row) in rows.enumerate() {
                match row {
                    Ok(row) => {
                        if each(Location::Row(i), Ok(row.to_json_value())).is_break() {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(RowProblem::new(Location::Row(i), format!("unreadable Parquet data: {e}"))),
                }
            }
            Ok(())
        }
    }
}

/// Rows in the file without parsing them: non-blank lines, or the Parquet footer's count.
pub fn count_rows(path: &Path) -> Result<usize, RowProblem> {
    let file = std::fs::File::open(path).map_err(|e| RowProblem::file(format!("cannot open: {e}")))?;
    match FileFormat::of(path) {
        Some(FileFormat::Parquet) => {
            let reader = SerializedFileReader::new(file)
                .map_err(|e| RowProblem::file(format!("not a readable Parquet file: {e}")))?;
            Ok(reader.metadata().file_metadata().num_rows().max(0) as usize)
        }
        _ => {
            let mut reader = BufReader::with_capacity(1 << 20, file);
            let mut buf = vec![0u8; 1 << 20];
            let (mut rows, mut blank) = (0, true);
            loop {
                let n = reader.read(&mut buf).map_err(|e| RowProblem::file(format!("cannot read: {e}")))?;
                if n == 0 {
                    return Ok(rows + usize::from(!blank));
                }
                for &b in &buf[..n] {
                    if b == b'\n' {
                        rows += usize::from(!blank);
                        blank = true;
                    } else if !b.is_ascii_whitespace() {
                        blank = false;
                    }
                }
            }
        }
    }
}
