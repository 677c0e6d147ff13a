//! `progress.json`: what a run in an output folder has finished, with the checksums of every
//! file it wrote, so a killed run can continue where it stopped and never trusts a damaged
//! file. The schema is versioned; every write is atomic (see [`crate::atomic`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Version of the progress.json layout (3: the layer files hold both massive-activation
/// readings and the per-sequence magnitudes).
pub const PROGRESS_SCHEMA_VERSION: u32 = 3;

/// A file a layer wrote, relative to the output folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the output folder, `/`-separated.
    pub path: String,
    /// Length in bytes.
    pub bytes: u64,
    /// sha256 of the contents, hex.
    pub sha256: String,
}

/// Why a recorded file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProblem {
    /// It is not there.
    Missing,
    /// Its length or checksum differs from the record.
    Damaged,
}

impl FileRecord {
    /// Records `bytes` written at `path` (relative to the output folder).
    pub fn of(path: &str, bytes: &[u8]) -> Self {
        FileRecord {
            path: path.to_string(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        }
    }

    /// Checks the file under `folder` against the record.
    pub fn verify(&self, folder: &Path) -> Result<(), FileProblem> {
        let full = folder.join(&self.path);
        let file = std::fs::File::open(full).map_err(|_| FileProblem::Missing)?;
        let length = file.metadata().map_err(|_| FileProblem::Missing)?.len();
        if length != self.bytes {
            return Err(FileProblem::Damaged);
        }
        // Streamed: hidden-state checkpoints can be larger than memory.
        let mut hasher = Sha256Writer::default();
        std::io::copy(&mut std::io::BufReader::new(file), &mut hasher)
            .map_err(|_| FileProblem::Damaged)?;
        if hasher.hex() != self.sha256 {
            return Err(FileProblem::Damaged);
        }
        Ok(())
    }
}

/// A writer that hashes what passes through it (sha256), for files written or read in pieces.
#[derive(Default)]
pub struct Sha256Writer {
    hasher: Sha256,
    bytes: u64,
}

impl Sha256Writer {
    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of everything written, lowercase hex.
    pub fn hex(self) -> String {
        self.hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl std::io::Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// sha256 as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One finished layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Its summary files.
    pub files: Vec<FileRecord>,
    /// When it finished (seconds since the Unix epoch).
    pub finished_unix: u64,
}

/// The hidden states entering the layer after `after_layer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HiddenRecord {
    /// The last layer they went through.
    pub after_layer: usize,
    /// The file.
    pub file: FileRecord,
}

/// The whole progress file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// [`PROGRESS_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// sha256 of config.json, every tensor header (name, dtype, shape, length) and the
    /// weight digests.
    pub model_fingerprint: String,
    /// Per part of the model (`embedding`, `layer N`, `output`, `other`): sha256 of sampled
    /// bytes of its tensors' values (schema 2).
    #[serde(default)]
    pub weight_digests: BTreeMap<String, String>,
    /// Where the model came from (for messages).
    pub model_name: String,
    /// sha256 of the packed token ids.
    pub data_fingerprint: String,
    /// Where the data came from (for messages).
    pub data_name: String,
    /// Every setting that changes results, as text.
    pub settings: BTreeMap<String, String>,
    /// How the run is executed (does not change results).
    pub plan: BTreeMap<String, String>,
    /// Layers to analyse.
    pub requested_layers: Vec<usize>,
    /// Layers of the model.
    pub num_layers: usize,
    /// Finished layers.
    pub layers: BTreeMap<usize, LayerRecord>,
    /// How many times each layer's results were computed in this folder (1 unless a file
    /// was damaged and the layer computed again); kept across runs.
    pub times_computed: BTreeMap<usize, u32>,
    /// Latest hidden-state checkpoint (older ones kept only when asked, listed here).
    pub hidden: Vec<HiddenRecord>,
    /// Files written from the finished layers (report.json, report.md, plots), relative
    /// paths: the run's own, replaced by the next report and deleted by `--restart`.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Times the command was started on this folder.
    pub runs: u32,
    /// First start (seconds since the Unix epoch).
    pub started_unix: u64,
    /// Last write (seconds since the Unix epoch).
    pub updated_unix: u64,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Which parts' weights differ between two runs (from their digests), as a clause.
fn changed_weights(then: &Progress, now: &Progress) -> String {
    if then.weight_digests.is_empty() || now.weight_digests.is_empty() {
        return String::new();
    }
    let parts: std::collections::BTreeSet<&String> = then
        .weight_digests
        .keys()
        .chain(now.weight_digests.keys())
        .collect();
    let mut changed: Vec<&String> = parts
        .into_iter()
        .filter(|p| then.weight_digests.get(*p) != now.weight_digests.get(*p))
        .collect();
    // Layers in numeric order.
    changed.sort_by_key(|p| {
        let layer = p
            .strip_prefix("layer ")
            .and_then(|n| n.parse::<usize>().ok());
        (layer.is_some(), layer, p.to_string())
    });
    match changed.is_empty() {
        true => "; the weights are the same, the config or tensor headers differ".into(),
        false => {
            let names: Vec<&str> = changed.iter().map(|p| p.as_str()).collect();
            format!("; the weights of {} differ", names.join(", "))
        }
    }
}

/// The differences between the result-changing identity of two runs, as lines a user reads.
pub fn identity_differences(then: &Progress, now: &Progress) -> Vec<String> {
    let mut differences = Vec::new();
    if then.model_fingerprint != now.model_fingerprint {
        differences.push(format!(
            "the model differs: {} (fingerprint {}) then, {} (fingerprint {}) now{}",
            then.model_name,
            &then.model_fingerprint[..12.min(then.model_fingerprint.len())],
            now.model_name,
            &now.model_fingerprint[..12.min(now.model_fingerprint.len())],
            changed_weights(then, now)
        ));
    }
    if then.data_fingerprint != now.data_fingerprint {
        differences.push(format!(
            "the data differs (token ids of {} then, {} now)",
            then.data_name, now.data_name
        ));
    }
    let keys: std::collections::BTreeSet<&String> =
        then.settings.keys().chain(now.settings.keys()).collect();
    for key in keys {
        let (a, b) = (then.settings.get(key), now.settings.get(key));
        if a != b {
            differences.push(format!(
                "{key}: {} then, {} now",
                a.map_or("unset", String::as_str),
                b.map_or("unset", String::as_str)
            ));
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> Progress {
        Progress {
            schema_version: PROGRESS_SCHEMA_VERSION,
            model_fingerprint: "a".repeat(64),
            weight_digests: BTreeMap::new(),
            model_name: "m".into(),
            data_fingerprint: "b".repeat(64),
            data_name: "d".into(),
            settings: BTreeMap::from([("threshold".into(), "6".into())]),
            plan: BTreeMap::new(),
            requested_layers: vec![0, 1],
            num_layers: 2,
            layers: BTreeMap::new(),
            times_computed: BTreeMap::new(),
            hidden: Vec::new(),
            outputs: Vec::new(),
            runs: 1,
            started_unix: 0,
            updated_unix: 0,
        }
    }

    #[test]
    fn differences_name_model_data_and_each_setting() {
        let then = progress();
        let mut now = progress();
        assert!(identity_differences(&then, &now).is_empty());
        now.settings.insert("threshold".into(), "5".into());
        now.data_fingerprint = "c".repeat(64);
        let lines = identity_differences(&then, &now);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().any(|l| l == "threshold: 6 then, 5 now"));
        let json = serde_json::to_string(&then).unwrap();
        assert_eq!(serde_json::from_str::<Progress>(&json).unwrap(), then);
    }

    #[test]
    fn file_records_catch_truncation_and_flipped_bytes() {
        let dir = std::env::temp_dir().join(format!("ls-progress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let record = FileRecord::of("x.bin", b"hello world");
        std::fs::write(dir.join("x.bin"), b"hello world").unwrap();
        assert_eq!(record.verify(&dir), Ok(()));
        std::fs::write(dir.join("x.bin"), b"hello worle").unwrap();
        assert_eq!(record.verify(&dir), Err(FileProblem::Damaged));
        std::fs::write(dir.join("x.bin"), b"hello").unwrap();
        assert_eq!(record.verify(&dir), Err(FileProblem::Damaged));
        std::fs::remove_file(dir.join("x.bin")).unwrap();
        assert_eq!(record.verify(&dir), Err(FileProblem::Missing));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
