//! Records of `--data` for per-record workloads (`--per-record`): each `.jsonl` line, each
//! `.parquet` row, each `.txt` line with `txt_lines` (else the whole `.txt` file, or standard
//! input, is one record) becomes one record, a JSON object of its fields (a text line is
//! `{"text": line}`), with where it came from so errors can name it. Blank lines are not
//! records; a record whose fields are empty is (the scorer refuses it, naming it).

use super::documents::{DataFormat, for_each_jsonl_line, jsonl_error};
use super::sources::{DataSource, read_stdin};
use crate::error::{Result, RuntimeError};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// One record and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its number in the whole data, from 0, in input order.
    pub index: usize,
    /// The file (`-` for standard input).
    pub path: PathBuf,
    /// `line N` (1-based) or `row N` (0-based, as parquet tools count).
    pub place: String,
    /// Its fields.
    pub fields: Map<String, Value>,
    /// A `.jsonl` record's own text (objects in it keep their key order there, e.g. for a
    /// chat template's `tojson`).
    pub raw: Option<String>,
}

impl Record {
    /// `FILE line N`, for errors.
    pub fn describe(&self) -> String {
        format!("{} {}", self.path.display(), self.place)
    }

    /// An error about this record.
    pub fn error(&self, message: String) -> RuntimeError {
        RuntimeError::Data {
            path: self.path.clone(),
            message: format!("record {} ({}): {message}", self.index, self.place),
        }
    }
}

/// Every record of `--data` in order; with `txt_lines`, a `.txt` file (or standard input)
/// gives one record per non-blank line.
pub fn read_records(spec: &Path, txt_lines: bool) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut push = |path: &Path, place: String, fields: Map<String, Value>, raw: Option<&str>| {
        records.push(Record {
            index: records.len(),
            path: path.to_path_buf(),
            place,
            fields,
            raw: raw.map(str::to_string),
        });
    };
    let text = |t: &str| Map::from_iter([("text".to_string(), Value::String(t.to_string()))]);
    match DataSource::resolve(spec)? {
        DataSource::Stdin => {
            let all = read_stdin(spec)?;
            text_records(spec, &all, txt_lines, &mut |p, place, t| {
                push(p, place, text(t), None)
            });
        }
        DataSource::Files(files) => {
            for path in &files {
                match DataFormat::of(path)? {
                    DataFormat::Txt => {
                        let all =
                            std::fs::read_to_string(path).map_err(|e| RuntimeError::Data {
                                path: path.to_path_buf(),
                                message: format!("cannot be read as UTF-8 text: {e}"),
                            })?;
                        text_records(path, &all, txt_lines, &mut |p, place, t| {
                            push(p, place, text(t), None)
                        });
                    }
                    DataFormat::Jsonl => jsonl_records(path, &mut push)?,
                    DataFormat::Parquet => parquet_records(path, &mut push)?,
                }
            }
        }
    }
    Ok(records)
}

/// A text's records: its non-blank lines, or the whole text.
fn text_records(path: &Path, all: &str, lines: bool, push: &mut dyn FnMut(&Path, String, &str)) {
    let all = all.strip_prefix('\u{feff}').unwrap_or(all);
    if !lines {
        push(path, "(the whole file)".into(), all);
        return;
    }
    for (index, line) in all.lines().enumerate() {
        if !line.trim().is_empty() {
            push(path, format!("line {}", index + 1), line);
        }
    }
}

type Push<'a> = dyn FnMut(&Path, String, Map<String, Value>, Option<&str>) + 'a;

fn jsonl_records(path: &Path, push: &mut Push) -> Result<()> {
    for_each_jsonl_line(path, &mut |number, line| {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(fields)) => push(path, format!("line {number}"), fields, Some(line)),
            Ok(other) => {
                let message = format!("a record must be a JSON object, not {other}");
                return Err(jsonl_error(path, number, message));
            }
            Err(e) => return Err(jsonl_error(path, number, format!("not valid JSON: {e}"))),
        }
        Ok(ControlFlow::Continue(()))
    })
}

fn parquet_records(path: &Path, push: &mut Push) -> Result<()> {
    let error = |message: String| RuntimeError::Data {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| RuntimeError::io("cannot open", path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| error(format!("not a readable parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| error(format!("cannot read its rows: {e}")))?;
    for (index, row) in rows.enumerate() {
        let row = row.map_err(|e| error(format!("row {index}: {e}")))?;
        let fields = row
            .get_column_iter()
            .map(|(name, field)| (name.clone(), json_of(field)))
            .collect();
        push(path, format!("row {index}"), fields, None);
    }
    Ok(())
}

/// A parquet value as JSON (strings, numbers, lists and structs; `messages` columns too).
fn json_of(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(v) => Value::from(*v),
        Field::Short(v) => Value::from(*v),
        Field::Int(v) => Value::from(*v),
        Field::Long(v) => Value::from(*v),
        Field::UByte(v) => Value::from(*v),
        Field::UShort(v) => Value::from(*v),
        Field::UInt(v) => Value::from(*v),
        Field::ULong(v) => Value::from(*v),
        Field::Float(v) => Value::from(*v),
        Field::Double(v) => Value::from(*v),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::Null,
        },
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(json_of).collect()),
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(name, field)| (name.clone(), json_of(field)))
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_and_json_lines_become_numbered_records() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("prompts.txt");
        std::fs::write(&txt, "first\n\n  \nsecond line\n").unwrap();
        let records = read_records(&txt, true).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].place, "line 4");
        assert_eq!(records[1].fields["text"], "second line");
        assert_eq!(read_records(&txt, false).unwrap().len(), 1);
        let jsonl = dir.path().join("r.jsonl");
        std::fs::write(
            &jsonl,
            "{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\", \"id\": 7}\n",
        )
        .unwrap();
        let records = read_records(&jsonl, false).unwrap();
        assert_eq!((records[1].index, records[1].place.as_str()), (1, "line 3"));
        assert_eq!(records[1].fields["id"], 7);
        std::fs::write(&jsonl, "{\"prompt\": \"a\"}\n[1, 2]\n").unwrap();
        let error = read_records(&jsonl, false).unwrap_err().to_string();
        assert!(
            error.contains("line 2") && error.contains("JSON object"),
            "{error}"
        );
    }
}
