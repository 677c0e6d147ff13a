//! Documents from a data file: `.txt` (the whole file is one document), `.jsonl` (one JSON
//! object per line, text in `text_field`) and `.parquet` (column `text_field`, e.g. the
//! fineweb-edu shards). Empty and whitespace-only documents are skipped.

use crate::error::{Result, RuntimeError};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;
use parquet::schema::types::Type as ParquetType;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use super::sources::{DataSource, read_stdin};

/// Data file formats, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// Plain text, one document.
    Txt,
    /// JSON lines.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl DataFormat {
    /// The format of `path` from its extension.
    pub fn of(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("txt") | Some("text") => Ok(DataFormat::Txt),
            Some("jsonl") | Some("ndjson") => Ok(DataFormat::Jsonl),
            Some("parquet") => Ok(DataFormat::Parquet),
            _ => Err(RuntimeError::Data {
                path: path.to_path_buf(),
                message: "unknown data format; --data takes .txt, .jsonl or .parquet files".into(),
            }),
        }
    }
}

/// Calls `visit` with each non-empty document of `--data` (a file, a folder, a glob or `-`:
/// [`DataSource`]) until it breaks or the data ends; returns the number visited.
pub fn for_each_document(
    spec: &Path,
    text_field: &str,
    mut visit: impl FnMut(&str) -> Result<ControlFlow<()>>,
) -> Result<usize> {
    let files = match DataSource::resolve(spec)? {
        DataSource::Files(files) => files,
        DataSource::Stdin => {
            let text = read_stdin(spec)?;
            if text.trim().is_empty() {
                return Ok(0);
            }
            let _ = visit(&text)?;
            return Ok(1);
        }
    };
    let mut count = 0;
    for path in &files {
        let mut stop = false;
        count += for_each_in_file(path, text_field, &mut |text: &str| {
            let flow = visit(text)?;
            stop = flow.is_break();
            Ok(flow)
        })?;
        if stop {
            break;
        }
    }
    Ok(count)
}

/// [`for_each_document`] of one file.
fn for_each_in_file(
    path: &Path,
    text_field: &str,
    mut visit: impl FnMut(&str) -> Result<ControlFlow<()>>,
) -> Result<usize> {
    let format = DataFormat::of(path)?;
    // A regular file, or a named pipe (text streamed in by another process).
    let readable = std::fs::metadata(path)
        .is_ok_and(|m| m.is_file() || std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
    if !readable {
        return Err(RuntimeError::Data {
            path: path.to_path_buf(),
            message: "not found (or not a file)".into(),
        });
    }
    let mut count = 0;
    let mut counted = |text: &str| -> Result<ControlFlow<()>> {
        if text.trim().is_empty() {
            return Ok(ControlFlow::Continue(()));
        }
        count += 1;
        visit(text)
    };
    match format {
        DataFormat::Txt => {
            let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::Data {
                path: path.to_path_buf(),
                message: format!("cannot be read as UTF-8 text: {e}"),
            })?;
            // One document: whether the visitor wants more does not matter.
            let _ = counted(text.strip_prefix('\u{feff}').unwrap_or(&text))?;
        }
        DataFormat::Jsonl => read_jsonl(path, text_field, &mut counted)?,
        DataFormat::Parquet => read_parquet(path, text_field, &mut counted)?,
    }
    Ok(count)
}

/// Calls `visit(line number, line)` for each non-blank line of a JSON-lines file (a
/// byte-order mark at its start dropped) until it breaks; `error` builds the errors that name
/// a line.
pub(super) fn for_each_jsonl_line(
    path: &Path,
    visit: &mut dyn FnMut(usize, &str) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| RuntimeError::io("cannot open", path, e))?;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| jsonl_error(path, number, format!("cannot be read: {e}")))?;
        // A byte-order mark some editors put at the start of the file.
        let line = match number {
            1 => line.strip_prefix('\u{feff}').unwrap_or(&line),
            _ => &line,
        };
        if line.trim().is_empty() {
            continue;
        }
        if visit(number, line)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// An error about line `line` of a JSON-lines file.
pub(super) fn jsonl_error(path: &Path, line: usize, message: String) -> RuntimeError {
    RuntimeError::Data {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    }
}

fn read_jsonl(
    path: &Path,
    text_field: &str,
    visit: &mut dyn FnMut(&str) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let error = |line: usize, message: String| jsonl_error(path, line, message);
    for_each_jsonl_line(path, &mut |number, line| {
        let record: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| error(number, format!("not valid JSON: {e}")))?;
        let text = match record.get(text_field) {
            Some(serde_json::Value::String(text)) => text,
            Some(other) => {
                return Err(error(
                    number,
                    format!("field {text_field:?} is {other}, not a string"),
                ));
            }
            None => {
                let fields: Vec<String> = record
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                return Err(error(
                    number,
                    format!(
                        "no field {text_field:?} (fields: {}); choose the text field with --text-field",
                        fields.join(", ")
                    ),
                ));
            }
        };
        visit(text)
    })
}

fn read_parquet(
    path: &Path,
    text_field: &str,
    visit: &mut dyn FnMut(&str) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let error = |message: String| RuntimeError::Data {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| RuntimeError::io("cannot open", path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| error(format!("not a readable parquet file: {e}")))?;
    let schema = reader.metadata().file_metadata().schema();
    let field = schema
        .get_fields()
        .iter()
        .find(|f| f.name() == text_field)
        .ok_or_else(|| {
            let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
            error(format!(
                "no column {text_field:?} (columns: {}); choose the text column with --text-field",
                names.join(", ")
            ))
        })?;
    let projection = ParquetType::group_type_builder(schema.name())
        .with_fields(vec![Arc::clone(field)])
        .build()
        .map_err(|e| error(format!("cannot select column {text_field:?}: {e}")))?;
    let rows = reader
        .get_row_iter(Some(projection))
        .map_err(|e| error(format!("cannot read column {text_field:?}: {e}")))?;
    for (index, row) in rows.enumerate() {
        let row = row.map_err(|e| error(format!("row {index}: {e}")))?;
        let text = match row.get_string(0) {
            Ok(text) => text.clone(),
            Err(_) => match row.get_bytes(0) {
                Ok(bytes) => String::from_utf8(bytes.data().to_vec()).map_err(|_| {
                    error(format!(
                        "row {index}: column {text_field:?} is not UTF-8 text"
                    ))
                })?,
                Err(_) => {
                    return Err(error(format!(
                        "row {index}: column {text_field:?} is not a string column (or is null)"
                    )));
                }
            },
        };
        if visit(&text)?.is_break() {
            break;
        }
    }
    Ok(())
}
