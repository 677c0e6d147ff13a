//! Which files of an output folder are the run's own. A run writes only into an empty
//! folder or one holding its own run; it deletes or replaces only files it recorded
//! (progress.json, the layer records) and the temp files of its own atomic writes. Anything
//! else a user keeps there is left alone.

use super::folder::PROGRESS_FILE;
use super::layer_record::{LayerSelfRecord, layer_record_path};
use super::lock::{LOCK_FILE, WRITE_PROBE_PREFIX};
use crate::error::{Result, RuntimeError};
use layerstream_planner::progress::Progress;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Sub-folders a run creates (removed by `--restart` once nothing else is in them).
const RUN_FOLDERS: [&str; 5] = ["layers", "hidden", "plots", "activations", "work"];

/// Refuses a folder that holds files but no run: a new run would overwrite its report.json
/// and the like. The lock (taken before), the write probe, the temp files of a run's atomic
/// writes (a run killed while writing its first progress.json leaves only that) and empty
/// run sub-folders are the run's own.
pub(super) fn refuse_foreign_folder(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let empty_run_folder = |name: &str| {
        RUN_FOLDERS.contains(&name)
            && std::fs::read_dir(dir.join(name)).is_ok_and(|mut inside| inside.next().is_none())
    };
    let mut found: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // `shards/`: the shard folders of an `analyze --devices` run, merged into this one.
        .filter(|name| {
            name != LOCK_FILE
                && !name.starts_with(WRITE_PROBE_PREFIX)
                && name != "shards"
                && !is_run_temp_name(".", name)
                && !empty_run_folder(name)
        })
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    let more = found.len().saturating_sub(5);
    found.truncate(5);
    Err(RuntimeError::InvalidRequest(format!(
        "{} is not empty and holds no layerstream run (it has {}{}); layerstream writes only into an empty folder or one of its own runs, so nothing there is overwritten: choose another --out (a missing folder is created)",
        dir.display(),
        found.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )))
}

/// The files a run recorded: progress.json's layers, hidden states and outputs, and the
/// layer records' files (relative paths).
fn recorded_files(
    progress: Option<&Progress>,
    records: &BTreeMap<usize, LayerSelfRecord>,
) -> BTreeSet<String> {
    let mut files = BTreeSet::from([PROGRESS_FILE.to_string()]);
    if let Some(progress) = progress {
        for (layer, record) in &progress.layers {
            files.insert(layer_record_path(*layer));
            files.extend(record.files.iter().map(|f| f.path.clone()));
        }
        files.extend(progress.hidden.iter().map(|h| h.file.path.clone()));
        files.extend(progress.outputs.iter().cloned());
    }
    for (layer, record) in records {
        files.insert(layer_record_path(*layer));
        files.extend(record.record.files.iter().map(|f| f.path.clone()));
    }
    files
}

/// `--restart`: deletes the files the run recorded (and the temp files of their atomic
/// writes), then the run's sub-folders if nothing else is left in them.
pub(super) fn remove_recorded_files(
    dir: &Path,
    progress: Option<&Progress>,
    records: &BTreeMap<usize, LayerSelfRecord>,
) -> Result<()> {
    for relative in recorded_files(progress, records) {
        // Only relative paths inside the folder (a hand-edited record could name others).
        if relative.starts_with('/') || relative.split('/').any(|part| part == "..") {
            continue;
        }
        let path = dir.join(&relative);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io("cannot remove", &path, e)),
        }
    }
    remove_run_temp_files(dir);
    for sub in RUN_FOLDERS {
        // Fails (and keeps the folder) when anything else is in it.
        let _ = std::fs::remove_dir(dir.join(sub));
    }
    Ok(())
}

/// Whether `name` in sub-folder `sub` is a file a run writes (`.` for the folder itself).
pub(super) fn is_run_file_name(sub: &str, name: &str) -> bool {
    let numbered = |prefix: &str, suffixes: &[&str]| {
        name.strip_prefix(prefix).is_some_and(|rest| {
            suffixes.iter().any(|s| {
                rest.strip_suffix(s)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
    };
    match sub {
        "." => matches!(name, "progress.json" | "report.json" | "report.md"),
        "layers" => numbered("layer_", &[".json", ".safetensors", ".record.json"]),
        "hidden" => numbered("after_layer_", &[".safetensors"]),
        "plots" => name.ends_with(".svg") || name.ends_with(".png"),
        "activations" => {
            numbered("layer_", &[".json"]) || matches!(name, "index.json" | "tokens.safetensors")
        }
        _ => false,
    }
}

/// Whether `name` in `sub` is the temp file of an atomic write of a run file
/// (`.{name}.tmp-{pid}`) or of a raw-activation file (`activations/.layer_…tmp`).
pub(super) fn is_run_temp_name(sub: &str, name: &str) -> bool {
    if sub == "activations" && name.starts_with(".layer_") && name.ends_with(".tmp") {
        return true;
    }
    let Some((base, pid)) = name
        .strip_prefix('.')
        .and_then(|rest| rest.rsplit_once(".tmp-"))
    else {
        return false;
    };
    !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && is_run_file_name(sub, base)
}

/// Deletes the temp files killed writes of a run left.
pub(super) fn remove_run_temp_files(dir: &Path) {
    for sub in [".", "layers", "hidden", "plots", "activations"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_run_temp_name(sub, &name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_and_their_temps_are_told_from_others() {
        assert!(is_run_temp_name(".", ".progress.json.tmp-123"));
        assert!(is_run_temp_name("layers", ".layer_3.record.json.tmp-9"));
        assert!(is_run_temp_name(
            "hidden",
            ".after_layer_11.safetensors.tmp-42"
        ));
        assert!(is_run_temp_name("activations", ".layer_0_ln1.tmp"));
        assert!(!is_run_temp_name(".", ".notes.txt.tmp-123"));
        assert!(!is_run_temp_name(".", ".report.json.tmp-abc"));
        assert!(!is_run_temp_name("layers", ".layer_x.json.tmp-1"));
        assert!(!is_run_file_name("hidden", "my_states.safetensors"));
        assert!(is_run_file_name("layers", "layer_10.safetensors"));
    }

    /// A run killed while writing its first progress.json leaves only the temp file (and
    /// perhaps its empty sub-folders): running the same command again must start, not refuse
    /// the folder; anything else there is still refused.
    #[test]
    fn a_folder_with_only_a_killed_first_write_is_not_foreign() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".progress.json.tmp-12144"), b"{").unwrap();
        std::fs::create_dir(dir.path().join("layers")).unwrap();
        refuse_foreign_folder(dir.path()).unwrap();
        std::fs::write(dir.path().join("layers/notes.txt"), b"mine").unwrap();
        let refused = refuse_foreign_folder(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("layers"), "{refused}");
        std::fs::remove_file(dir.path().join("layers/notes.txt")).unwrap();
        std::fs::write(dir.path().join(".notes.txt.tmp-1"), b"mine").unwrap();
        let refused = refuse_foreign_folder(dir.path()).unwrap_err().to_string();
        assert!(refused.contains(".notes.txt.tmp-1"), "{refused}");
    }
}
