//! `--model ORG/NAME[@REVISION]`: a model in the local Hugging Face cache, found as
//! `huggingface_hub` lays it out: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`; `models--ORG--NAME/refs/<revision>` holds a commit, whose files
//! are `snapshots/<commit>/` (symlinks into `blobs/`). A revision may also be a commit.

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

/// The snapshot folder of `spec` when it is a model id (and no folder of that name exists);
/// `None` for anything else (a path, used as given). Prints which snapshot it used.
pub fn resolve(spec: &Path, var: impl Fn(&str) -> Option<String>) -> Result<Option<PathBuf>> {
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
    let fetch = format!(
        "download it with `huggingface-cli download {id}` (or `hf download {id}`), or give --model a folder"
    );
    let repo = cache.join(format!("models--{org}--{name}"));
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
    eprintln!(
        "model {id}: snapshot {commit} (revision {revision}) from {}",
        cache.display()
    );
    Ok(Some(snapshot))
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
