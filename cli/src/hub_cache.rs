//! `--model ORG/NAME[@REVISION]`: a model in the local Hugging Face cache, found as
//! `huggingface_hub` lays it out: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`; `models--ORG--NAME/refs/<revision>` holds a commit, whose files
//! are `snapshots/<commit>/` (symlinks into `blobs/`). A revision may also be a commit.

use crate::hub_download::{HubModel, Need, download as fetch};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// The cache folder the environment names.
pub fn cache_dir(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(dir) = var("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = var("HF_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(home).join("hub"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".cache/huggingface/hub"))
}

/// `ORG/NAME` and the revision, when `spec` reads as a model id (and is not a folder).
fn parse_id(spec: &str) -> Option<(&str, &str, &str)> {
    let (id, revision) = match spec.split_once('@') {
        Some((id, revision)) if !revision.is_empty() => (id, revision),
        Some(_) => return None,
        None => (spec, "main"),
    };
    let (org, name) = id.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (valid(org) && valid(name)).then_some((org, name, revision))
}

/// The folder to open for `spec` when it is a model id (and no folder of that name exists):
/// its snapshot in the cache, fetched first when `download` (`--download`) and what `need`
/// reads is not there; `None` for anything else (a path, used as given). Says which
/// snapshot it used.
pub fn resolve(
    spec: &Path,
    need: Need,
    download: bool,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<PathBuf>> {
    if spec.exists() {
        return Ok(None);
    }
    let Some((org, name, revision)) = spec.to_str().and_then(parse_id) else {
        return Ok(None);
    };
    let id = format!("{org}/{name}");
    let Some(cache) = cache_dir(&var) else {
        bail!(
            "--model {id}: no Hugging Face cache to look in (set HF_HUB_CACHE or HF_HOME), and no folder of that name"
        );
    };
    match (local_snapshot(&cache, &id, revision, need), download) {
        (Ok(snapshot), _) => {
            eprintln!(
                "model {id}: snapshot {} (revision {revision}) from {}",
                snapshot.file_name().unwrap_or_default().to_string_lossy(),
                cache.display()
            );
            Ok(Some(snapshot))
        }
        (Err(_), true) => {
            let model = HubModel {
                id: &id,
                revision,
                cache: &cache,
            };
            fetch(&model, need, var).map(Some)
        }
        (Err(why), false) => Err(why),
    }
}

/// The snapshot of `id` at `revision` in `cache` when it holds what `need` reads, else why
/// not (with the command that fetches it).
fn local_snapshot(cache: &Path, id: &str, revision: &str, need: Need) -> Result<PathBuf> {
    let fetch = format!(
        "add --download (or set LAYERSTREAM_DOWNLOAD=1) to fetch what this command needs, download it with `huggingface-cli download {id}` (or `hf download {id}`), or give --model a folder"
    );
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    if !repo.is_dir() {
        bail!(
            "--model {id}: not in the Hugging Face cache {} and no folder of that name; {fetch}",
            cache.display()
        );
    }
    let reference = repo.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&reference) {
        Ok(commit) => commit.trim().to_string(),
        Err(_) if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) => {
            revision.to_string()
        }
        Err(_) => {
            let known: Vec<String> = std::fs::read_dir(repo.join("refs"))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            bail!(
                "--model {id}@{revision}: the cache {} has no revision {revision:?} (refs: {}); {fetch}",
                repo.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
    };
    let snapshot = repo.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        bail!(
            "--model {id}: revision {revision} is commit {commit}, whose snapshot {} is missing (an interrupted download?); {fetch}",
            snapshot.display()
        );
    }
    if let Ok(entries) = std::fs::read_dir(&snapshot) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_symlink() && !path.exists() {
                bail!(
                    "--model {id}: {} points to a blob that is not there (a partial or cleaned-up download); {fetch}",
                    path.display()
                );
            }
        }
    }
    if let Some(missing) = snapshot_missing(&snapshot, need) {
        bail!(
            "--model {id}: the snapshot {} {missing}; {fetch}",
            snapshot.display()
        );
    }
    Ok(snapshot)
}

/// What a snapshot lacks of what `need` reads (`None`: nothing): config.json, the tokenizer
/// (for a run), and the weights: model.safetensors, or the index and every shard it names.
pub fn snapshot_missing(snapshot: &Path, need: Need) -> Option<String> {
    let lacks = |file: &str| !snapshot.join(file).exists();
    if lacks("config.json") {
        return Some("has no config.json".into());
    }
    if need == Need::Run && lacks("tokenizer.json") {
        return Some("has no tokenizer.json".into());
    }
    let index = snapshot.join("model.safetensors.index.json");
    let Ok(text) = std::fs::read(&index) else {
        return lacks("model.safetensors")
            .then(|| "has no model.safetensors and no model.safetensors.index.json".into());
    };
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let mut missing: Vec<&str> = json["weight_map"]
        .as_object()?
        .values()
        .filter_map(|v| v.as_str())
        .filter(|shard| lacks(shard))
        .collect();
    missing.sort();
    missing.dedup();
    (!missing.is_empty()).then(|| {
        format!(
            "lacks {} of the shards its index names ({}{})",
            missing.len(),
            missing[..missing.len().min(3)].join(", "),
            if missing.len() > 3 { ", ..." } else { "" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_org_name_with_an_optional_revision() {
        assert_eq!(
            parse_id("allenai/OLMoE-1B-7B-0125"),
            Some(("allenai", "OLMoE-1B-7B-0125", "main"))
        );
        assert_eq!(
            parse_id("Qwen/Qwen3-30B-A3B@v1.0"),
            Some(("Qwen", "Qwen3-30B-A3B", "v1.0"))
        );
        for not_an_id in ["model", "./a/b", "/abs/path", "a/b/c", "a/", "a/b@", "../x"] {
            assert_eq!(parse_id(not_an_id), None, "{not_an_id}");
        }
    }

    #[test]
    fn the_cache_folder_follows_huggingface_hub() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            cache_dir(env(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")])),
            Some("/c".into())
        );
        assert_eq!(
            cache_dir(env(&[("HF_HOME", "/h"), ("HOME", "/u")])),
            Some("/h/hub".into())
        );
        assert_eq!(
            cache_dir(env(&[("HOME", "/u")])),
            Some("/u/.cache/huggingface/hub".into())
        );
    }
}
