//! The model and text embedded in the binary, so `layerstream analyze` runs with no
//! arguments. They are written once to a cache folder (named by a hash of their bytes) and
//! then opened like any model folder and data file.

use anyhow::{Context, Result};
use layerstream_planner::write_atomically;
use std::path::{Path, PathBuf};

/// What reports call the embedded model.
pub const DEFAULT_MODEL_NAME: &str = "embedded default model (Llama architecture, 4 layers, hidden 128, trained on the embedded text)";
/// What reports call the embedded text.
pub const DEFAULT_DATA_NAME: &str =
    "embedded default text (prose of The Rust Programming Language, MIT OR Apache-2.0)";

const MODEL_FILES: &[(&str, &[u8])] = &[
    (
        "config.json",
        include_bytes!("../assets/default-model/config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../assets/default-model/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../assets/default-model/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../assets/default-model/tokenizer_config.json"),
    ),
];
const DATA_FILE: (&str, &[u8]) = (
    "default-data.txt",
    include_bytes!("../assets/default-data.txt"),
);

/// Folder of the embedded model, written to the cache on first use.
pub fn default_model_dir() -> Result<PathBuf> {
    materialize(MODEL_FILES)
}

/// The embedded text file, written to the cache on first use.
pub fn default_data_file() -> Result<PathBuf> {
    Ok(materialize(&[DATA_FILE])?.join(DATA_FILE.0))
}

/// Where embedded files are written: `LAYERSTREAM_CACHE_DIR`, else `XDG_CACHE_HOME/layerstream`,
/// else `~/.cache/layerstream`, else the temp folder.
pub fn cache_root() -> PathBuf {
    let from_env = |key: &str| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from_env("LAYERSTREAM_CACHE_DIR")
        .or_else(|| from_env("XDG_CACHE_HOME").map(|p| p.join("layerstream")))
        .or_else(|| from_env("HOME").map(|p| p.join(".cache").join("layerstream")))
        .unwrap_or_else(|| std::env::temp_dir().join("layerstream-cache"))
}

/// Writes `files` into a folder named by their hash unless an identical copy is there.
fn materialize(files: &[(&str, &[u8])]) -> Result<PathBuf> {
    let dir = cache_root().join(format!("embedded-{:016x}", fnv1a(files)));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create {} for the embedded default files; set LAYERSTREAM_CACHE_DIR to a writable folder", dir.display()))?;
    for (name, bytes) in files {
        let path = dir.join(name);
        if !same_contents(&path, bytes) {
            write_atomically(&path, bytes).with_context(|| {
                format!(
                    "cannot write {}; set LAYERSTREAM_CACHE_DIR to a writable folder",
                    path.display()
                )
            })?;
        }
    }
    Ok(dir)
}

fn same_contents(path: &Path, bytes: &[u8]) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == bytes.len() as u64)
        && std::fs::read(path).is_ok_and(|on_disk| on_disk == bytes)
}

/// FNV-1a over names and contents: a stable folder name for this set of files.
fn fnv1a(files: &[(&str, &[u8])]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (name, bytes) in files {
        for &byte in name.as_bytes().iter().chain(*bytes) {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}
