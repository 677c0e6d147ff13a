//! The model's tokenizer (`tokenizer.json`, through the tokenizers crate) and the special
//! tokens packing needs: the end-of-text token that joins documents and the prefix (usually
//! BOS) the tokenizer's own configuration puts before a text.

use crate::config::ModelConfig;
use crate::error::{Result, RuntimeError};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// A tokenizer with the special tokens packing uses.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    /// Token placed after every document.
    pub eos_id: u32,
    /// Tokens the tokenizer adds before a text (e.g. `[BOS]`); every packed sequence starts
    /// with them.
    pub sequence_prefix: Vec<u32>,
}

impl TextTokenizer {
    /// Loads `DIR/tokenizer.json` and `DIR/tokenizer_config.json` (optional).
    ///
    /// The prefix is what the tokenizer's post-processor adds in front of a text when
    /// special tokens are on (Llama: BOS; Qwen, OLMo 2: nothing); if it adds nothing but
    /// tokenizer_config.json says `add_bos_token: true`, the prefix is its `bos_token`.
    /// End of text is tokenizer_config.json's `eos_token`, else config.json's `eos_token_id`.
    pub fn load(model_dir: &Path, config: &ModelConfig) -> Result<Self> {
        let path = model_dir.join("tokenizer.json");
        if !path.exists() {
            return Err(RuntimeError::Tokenizer {
                path,
                message:
                    "not found; the model folder needs the tokenizer.json saved with the model"
                        .into(),
            });
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| RuntimeError::Tokenizer {
            path: path.clone(),
            message: format!("cannot be loaded: {e}"),
        })?;
        let tokenizer_config = read_tokenizer_config(model_dir)?;
        let config_path = model_dir.join("tokenizer_config.json");
        let special = |field: &str| -> Result<Option<u32>> {
            special_token(&tokenizer, tokenizer_config.as_ref(), field, &config_path)
        };
        let bos_id = special("bos_token")?;
        let eos_id = match special("eos_token")? {
            Some(id) => id,
            None => config.first_eos_token_id().ok_or_else(|| RuntimeError::Tokenizer {
                path: path.clone(),
                message: "no end-of-text token: neither tokenizer_config.json's eos_token nor config.json's eos_token_id names one".into(),
            })?,
        };
        let add_bos = match tokenizer_config
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
        {
            None | Some(Value::Null) => false,
            Some(Value::Bool(add)) => *add,
            Some(other) => {
                return Err(RuntimeError::Tokenizer {
                    path: config_path,
                    message: format!("`add_bos_token` is {other}; it must be true or false"),
                });
            }
        };
        let mut text = TextTokenizer {
            tokenizer,
            path,
            eos_id,
            sequence_prefix: Vec::new(),
        };
        text.sequence_prefix = text.post_processor_prefix()?;
        if text.sequence_prefix.is_empty() && add_bos {
            let bos = bos_id.ok_or_else(|| RuntimeError::Tokenizer {
                path: config_path.clone(),
                message: "`add_bos_token` is true but no `bos_token` is named; name it or set add_bos_token to false".into(),
            })?;
            text.sequence_prefix.push(bos);
        }
        Ok(text)
    }

    /// Token ids of `text` without special tokens. `encode_fast`: the same ids as `encode`,
    /// without tracking each token's offsets in the text (nothing here reads them).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode_fast(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| RuntimeError::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot encode text: {e}"),
            })
    }

    /// The text of one token, for reports.
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer
            .id_to_token(id)
            .unwrap_or_else(|| format!("<{id}>"))
    }

    /// The text one token decodes to (special tokens as their text), for score outputs.
    pub fn decode_one(&self, id: u32) -> String {
        self.tokenizer
            .decode(&[id], false)
            .unwrap_or_else(|_| self.token_text(id))
    }

    /// Number of tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Tokens the post-processor puts before a text.
    fn post_processor_prefix(&self) -> Result<Vec<u32>> {
        let sample = "a";
        let with = self.tokenizer.encode(sample, true);
        let without = self.tokenizer.encode(sample, false);
        let (with, without) = match (with, without) {
            (Ok(w), Ok(wo)) => (w.get_ids().to_vec(), wo.get_ids().to_vec()),
            (Err(e), _) | (_, Err(e)) => {
                return Err(RuntimeError::Tokenizer {
                    path: self.path.clone(),
                    message: format!("cannot encode a sample text: {e}"),
                });
            }
        };
        let start = (0..=with.len().saturating_sub(without.len()))
            .find(|&i| with[i..].starts_with(&without))
            .unwrap_or(0);
        Ok(with[..start].to_vec())
    }
}

/// The id of a special token tokenizer_config.json names (`"<s>"` or `{"content": "<s>"}`);
/// a named token the vocabulary lacks is an error, never a silent fallback.
fn special_token(
    tokenizer: &Tokenizer,
    tokenizer_config: Option<&Value>,
    field: &str,
    config_path: &Path,
) -> Result<Option<u32>> {
    let Some(value) = tokenizer_config
        .and_then(|c| c.get(field))
        .filter(|v| !v.is_null())
    else {
        return Ok(None);
    };
    let error = |message: String| RuntimeError::Tokenizer {
        path: config_path.to_path_buf(),
        message,
    };
    let text = value
        .as_str()
        .or_else(|| value.get("content")?.as_str())
        .ok_or_else(|| error(format!("`{field}` is {value}; it must be a token's text")))?;
    tokenizer.token_to_id(text).map(Some).ok_or_else(|| {
        error(format!(
            "`{field}` {text:?} is not a token of tokenizer.json's vocabulary; the two files do not belong together"
        ))
    })
}

fn read_tokenizer_config(model_dir: &Path) -> Result<Option<Value>> {
    let path = model_dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| RuntimeError::io("cannot read", &path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| RuntimeError::Tokenizer {
            path,
            message: format!("not valid JSON: {e}"),
        })
}
