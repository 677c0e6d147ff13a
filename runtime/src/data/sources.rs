//! What `--data` names: one file, a folder (its data files in sorted order), a glob
//! (`'shards/*.parquet'`, matches in sorted order), or `-` (text from standard input, one
//! document). The files are read as one stream of documents.

use super::documents::DataFormat;
use crate::error::{Result, RuntimeError};
use std::path::{Path, PathBuf};

/// Where the documents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// Files in order (one for a plain `--data FILE`).
    Files(Vec<PathBuf>),
    /// Standard input, one text document.
    Stdin,
}

fn data_error(path: &Path, message: String) -> RuntimeError {
    RuntimeError::Data {
        path: path.to_path_buf(),
        message,
    }
}

impl DataSource {
    /// Resolves `--data`.
    pub fn resolve(spec: &Path) -> Result<Self> {
        if spec == Path::new("-") {
            return Ok(DataSource::Stdin);
        }
        if spec.is_dir() {
            return folder(spec).map(DataSource::Files);
        }
        let text = spec.to_string_lossy();
        if !spec.exists() && text.contains(['*', '?', '[']) {
            return matches(spec, &text).map(DataSource::Files);
        }
        Ok(DataSource::Files(vec![spec.to_path_buf()]))
    }

    /// The files' names as the run's identity records them (a folder or glob's list; `None`
    /// for one file or standard input, whose contents alone identify the data).
    pub fn names(&self) -> Option<Vec<String>> {
        match self {
            DataSource::Files(files) if files.len() > 1 => {
                Some(files.iter().map(|f| f.display().to_string()).collect())
            }
            _ => None,
        }
    }
}

/// Standard input as UTF-8 text (a byte-order mark at its start dropped); `spec` (`-`) names
/// it in errors.
pub fn read_stdin(spec: &Path) -> Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| {
        data_error(
            spec,
            format!("standard input cannot be read as UTF-8 text: {e}"),
        )
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// A folder's data files, sorted by name; anything else in it is refused (naming it) so a
/// stray file is not silently skipped or read as text.
fn folder(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| RuntimeError::io("cannot read", dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(data_error(
            dir,
            "is an empty folder; --data DIR reads the .txt, .jsonl and .parquet files in it".into(),
        ));
    }
    for file in &files {
        if file.is_dir() {
            return Err(data_error(
                file,
                "is a folder inside --data's folder; --data DIR reads the files directly in it (use a glob such as 'DIR/*/*.parquet' for nested ones)".into(),
            ));
        }
        if DataFormat::of(file).is_err() {
            return Err(data_error(
                file,
                format!(
                    "is in --data's folder {} but is not a .txt, .jsonl or .parquet file; move it out or name the files with a glob",
                    dir.display()
                ),
            ));
        }
    }
    Ok(files)
}

/// A glob's matches, sorted.
fn matches(spec: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let paths = glob::glob(pattern)
        .map_err(|e| data_error(spec, format!("is not a valid glob pattern: {e}")))?;
    let mut files = Vec::new();
    for path in paths {
        let path = path.map_err(|e| data_error(spec, format!("cannot read a match: {e}")))?;
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(data_error(spec, "matches no file".into()));
    }
    for file in &files {
        DataFormat::of(file)?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_its_data_files_in_sorted_order_and_strays_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.jsonl", "a.txt", "c.parquet", ".hidden"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let DataSource::Files(files) = DataSource::resolve(dir.path()).unwrap() else {
            panic!("files")
        };
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.txt", "b.jsonl", "c.parquet"]);
        std::fs::write(dir.path().join("notes.md"), "x").unwrap();
        let err = DataSource::resolve(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("notes.md") && err.contains("not a .txt, .jsonl or .parquet"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = DataSource::resolve(empty.path()).unwrap_err().to_string();
        assert!(err.contains("empty folder"), "{err}");
    }

    #[test]
    fn a_glob_is_its_sorted_matches_and_stdin_is_a_dash() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["s2.jsonl", "s10.jsonl", "s1.jsonl", "other.txt"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let pattern = dir.path().join("s*.jsonl");
        let DataSource::Files(files) = DataSource::resolve(&pattern).unwrap() else {
            panic!("files")
        };
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["s1.jsonl", "s10.jsonl", "s2.jsonl"]);
        let none = dir.path().join("*.parquet");
        assert!(
            DataSource::resolve(&none)
                .unwrap_err()
                .to_string()
                .contains("matches no file")
        );
        assert_eq!(
            DataSource::resolve(Path::new("-")).unwrap(),
            DataSource::Stdin
        );
        let one = dir.path().join("other.txt");
        assert_eq!(
            DataSource::resolve(&one).unwrap(),
            DataSource::Files(vec![one])
        );
    }
}
