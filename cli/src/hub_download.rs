//! `--download`: fetches what a command needs of a model id into the Hugging Face cache, laid
//! out as `huggingface_hub` lays it out (`blobs/<etag>`, `snapshots/<commit>/<file>` linked to
//! them, `refs/<revision>`), so Python tools share the files. Downloads go through the
//! `hf-hub` crate (resumable `.part` files, retries from where a transfer broke off) against
//! `HF_ENDPOINT` with `HF_TOKEN`. Only what the run reads is fetched: config, tokenizer files,
//! the index and its shards (never `original/` or `metal/`). `inspect` and `estimate` need
//! the safetensors headers alone: those are read by HTTP range requests into sparse files of
//! the full size under layerstream's own cache, so a 200 GB model is planned from kilobytes.

use crate::hub_cache::snapshot_missing;
use anyhow::{Context, Result, anyhow, bail};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

/// What a command reads of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Everything a run reads: config, tokenizer, weights.
    Run,
    /// config.json and the safetensors headers (`inspect`, `estimate`).
    Headers,
}

/// Config and tokenizer files a run reads, where the repository has them.
const RUN_FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// A model id on the hub.
pub struct HubModel<'a> {
    /// `ORG/NAME`.
    pub id: &'a str,
    /// Branch, tag or commit.
    pub revision: &'a str,
    /// The Hugging Face cache (`HF_HUB_CACHE` ...).
    pub cache: &'a Path,
}

/// The hub's address, `HF_ENDPOINT` or huggingface.co.
fn endpoint(var: &impl Fn(&str) -> Option<String>) -> String {
    var("HF_ENDPOINT")
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// `HF_TOKEN`, else the token file `huggingface-cli login` writes (`HF_TOKEN_PATH`, else
/// `HF_HOME/token`, else `~/.cache/huggingface/token`).
fn token(var: &impl Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(token) = var("HF_TOKEN").filter(|t| !t.trim().is_empty()) {
        return Some(token.trim().to_string());
    }
    let path = var("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("token")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/token")))?;
    let token = std::fs::read_to_string(path).ok()?;
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
}

/// Fetches what `need` reads of `model` and returns the folder to open: the snapshot, or
/// (headers only, weights not in the cache) a folder of sparse copies of the shards.
pub fn download(
    model: &HubModel,
    need: Need,
    var: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf> {
    let endpoint = endpoint(&var);
    let token = token(&var);
    let api = ApiBuilder::from_cache(Cache::new(model.cache.to_path_buf()))
        .with_endpoint(endpoint.clone())
        .with_token(token.clone())
        .with_progress(false)
        .with_retries(5)
        .build()
        .map_err(|e| anyhow!("cannot set up the download client: {e}"))?;
    let repo = Repo::with_revision(
        model.id.to_string(),
        RepoType::Model,
        model.revision.to_string(),
    );
    let repo_api = api.repo(repo);
    let what = format!("{}@{} at {endpoint}", model.id, model.revision);
    let info = repo_api
        .info()
        .map_err(|e| describe(e, &what, token.is_some()))?;
    let files: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|f| !f.contains('/'))
        .collect();
    let snapshot = model
        .cache
        .join(format!("models--{}", model.id.replace('/', "--")))
        .join("snapshots")
        .join(&info.sha);
    let fetch = |file: &str| -> Result<PathBuf> {
        let local = snapshot.join(file);
        if local.exists() {
            return Ok(local);
        }
        let progress = FileProgress::new(file);
        repo_api
            .download_with_progress(file, progress)
            .map_err(|e| describe(e, &format!("{file} of {what}"), token.is_some()))
    };
    if !files.contains(&"config.json") {
        bail!(
            "{what} has no config.json: it is not a transformers model (files: {})",
            files.join(", ")
        );
    }
    for file in RUN_FILES {
        let wanted = need == Need::Run || file == "config.json";
        if wanted && files.contains(&file) {
            fetch(file)?;
        }
    }
    let shards: Vec<String> = if files.contains(&INDEX) {
        let index = fetch(INDEX)?;
        shard_names(&index)?
    } else if files.contains(&SINGLE) {
        vec![SINGLE.to_string()]
    } else {
        bail!(
            "{what} has no safetensors weights ({SINGLE} or {INDEX}; files: {}); layerstream reads safetensors",
            files.join(", ")
        );
    };
    if need == Need::Run || snapshot_missing(&snapshot, need).is_none() {
        for shard in &shards {
            fetch(shard)?;
        }
        if let Some(missing) = snapshot_missing(&snapshot, need) {
            bail!("{what}: downloaded, but {missing}; this is a bug in layerstream");
        }
        eprintln!(
            "model {}: snapshot {} in {}",
            model.id,
            info.sha,
            model.cache.display()
        );
        return Ok(snapshot);
    }
    let headers = header_folder(model.id, &info.sha);
    std::fs::create_dir_all(&headers)
        .with_context(|| format!("cannot create {}", headers.display()))?;
    for small in ["config.json", INDEX] {
        if snapshot.join(small).exists() {
            std::fs::copy(snapshot.join(small), headers.join(small))
                .with_context(|| format!("cannot copy {small} to {}", headers.display()))?;
        }
    }
    let agent = ureq::AgentBuilder::new().try_proxy_from_env(true).build();
    for shard in &shards {
        let local = snapshot.join(shard);
        let target = headers.join(shard);
        if local.exists() {
            std::fs::copy(&local, &target).with_context(|| {
                format!("cannot copy {} to {}", local.display(), target.display())
            })?;
            continue;
        }
        let url = format!("{endpoint}/{}/resolve/{}/{shard}", model.id, info.sha);
        fetch_header(&agent, &url, token.as_deref(), &target)
            .map_err(|e| describe(e, &format!("{shard} of {what}"), token.is_some()))?;
    }
    eprintln!(
        "model {}: config and safetensors headers of commit {} (weights not downloaded) in {}",
        model.id,
        info.sha,
        headers.display()
    );
    Ok(headers)
}

/// Where the header-only copies of a commit go: `<layerstream cache>/hub-headers/`.
fn header_folder(id: &str, commit: &str) -> PathBuf {
    crate::embedded::cache_root()
        .join("hub-headers")
        .join(format!("models--{}", id.replace('/', "--")))
        .join(commit)
}

/// The shard files an index names, sorted.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read(index).with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not valid JSON; delete it and download again",
            index.display()
        )
    })?;
    let Some(map) = json["weight_map"].as_object() else {
        bail!(
            "{} has no weight_map; delete it and download again",
            index.display()
        );
    };
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    if let Some(bad) = shards
        .iter()
        .find(|s| s.contains('/') || s.starts_with('.'))
    {
        bail!(
            "{} names a shard outside its folder ({bad})",
            index.display()
        );
    }
    Ok(shards)
}

/// Writes a sparse copy of the safetensors file at `url` to `target`: its 8-byte length and
/// JSON header, then a hole up to the file's full size. Two range requests where the server
/// takes ranges; otherwise the first bytes of one plain request.
fn fetch_header(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    target: &Path,
) -> std::result::Result<(), ApiError> {
    let get = |range: String| {
        let request = agent.get(url).set("Range", &range);
        match token {
            Some(t) => request.set("Authorization", &format!("Bearer {t}")),
            None => request,
        }
        .call()
        .map_err(|e| ApiError::RequestError(Box::new(e)))
    };
    let first = get("bytes=0-7".into())?;
    let ranged = first.status() == 206;
    let total: u64 = if ranged {
        first
            .header("Content-Range")
            .and_then(|r| r.rsplit('/').next())
            .and_then(|n| n.parse().ok())
            .ok_or(ApiError::InvalidHeader("Content-Range"))?
    } else {
        first
            .header("Content-Length")
            .and_then(|n| n.parse().ok())
            .ok_or(ApiError::MissingHeader("Content-Length"))?
    };
    let mut reader = first.into_reader();
    let mut length = [0u8; 8];
    reader.read_exact(&mut length)?;
    let header_len = u64::from_le_bytes(length);
    if header_len > 100 << 20 || 8 + header_len > total {
        return Err(ApiError::IoError(std::io::Error::other(format!(
            "not a safetensors file: its first 8 bytes give a header of {header_len} bytes in a file of {total}"
        ))));
    }
    let mut header = vec![0u8; header_len as usize];
    if ranged {
        drop(reader);
        get(format!("bytes=8-{}", 7 + header_len))?
            .into_reader()
            .read_exact(&mut header)?;
    } else {
        reader.read_exact(&mut header)?;
    }
    let temp = target.with_extension("partial-header");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&length)?;
    file.write_all(&header)?;
    file.set_len(total)?;
    drop(file);
    std::fs::rename(&temp, target)?;
    Ok(())
}

/// A download error as a user can act on it.
fn describe(error: ApiError, what: &str, has_token: bool) -> anyhow::Error {
    let token_hint = if has_token {
        "the token in HF_TOKEN cannot read it: check that it has access and that you accepted the model's licence on its page"
    } else {
        "it may be gated or private: set HF_TOKEN to a token that can read it (https://huggingface.co/settings/tokens)"
    };
    match error {
        ApiError::RequestError(boxed) => match *boxed {
            ureq::Error::Status(401, response) => anyhow!(
                "downloading {what}: 401 Unauthorized ({}): {token_hint}, and check the id",
                response.get_url()
            ),
            ureq::Error::Status(403, response) => anyhow!(
                "downloading {what}: 403 Forbidden ({}): {token_hint}",
                response.get_url()
            ),
            ureq::Error::Status(404, response) => anyhow!(
                "downloading {what}: 404 Not Found ({}): no such model, revision or file on the hub; check the id and the revision",
                response.get_url()
            ),
            ureq::Error::Status(code, response) => anyhow!(
                "downloading {what}: the hub answered {code} {} ({}); try again later",
                response.status_text(),
                response.get_url()
            ),
            ureq::Error::Transport(transport) => anyhow!(
                "downloading {what}: cannot reach the hub: {transport}; check the network, HF_ENDPOINT and any proxy; run the same command again to resume"
            ),
        },
        ApiError::TooManyRetries(inner) => anyhow!(
            "downloading {what}: the transfer kept breaking off ({inner}); run the same command again to resume from what arrived"
        ),
        other => anyhow!(
            "downloading {what}: {other}; run the same command again to resume from what arrived"
        ),
    }
}

/// A file's progress: a bar on a terminal, a line at start and end otherwise.
struct FileProgress {
    bar: indicatif::ProgressBar,
    name: String,
    lines: bool,
    started: bool,
}

impl FileProgress {
    fn new(name: &str) -> Self {
        let lines = !std::io::stderr().is_terminal();
        let bar = if lines {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            )
        };
        bar.set_message(format!("downloading {name}"));
        FileProgress {
            bar,
            name: name.to_string(),
            lines,
            started: false,
        }
    }
}

impl hf_hub::api::Progress for FileProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        self.bar.set_length(size as u64);
        self.bar.set_position(0);
        if self.lines && !self.started {
            eprintln!("downloading {} ({size} bytes)", self.name);
        }
        self.started = true;
    }

    fn update(&mut self, size: usize) {
        self.bar.inc(size as u64);
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
        if self.lines {
            eprintln!("downloaded {}", self.name);
        }
    }
}
