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
        let token_id = |tokenizer: &Tokenizer, field: &str| -> Option<u32> {
            let value = tokenizer_config.as_ref()?.get(field)?;
            let text = value.as_str().or_else(|| value.get("content")?.as_str())?;
            tokenizer.token_to_id(text)
        };
        let bos_id = token_id(&tokenizer, "bos_token");
        let eos_id = token_id(&tokenizer, "eos_token")
            .or_else(|| config.first_eos_token_id())
            .ok_or_else(|| RuntimeError::Tokenizer {
                path: path.clone(),
                message: "no end-of-text token: neither tokenizer_config.json's eos_token nor config.json's eos_token_id names one".into(),
            })?;
        let mut text = TextTokenizer {
            tokenizer,
            path,
            eos_id,
            sequence_prefix: Vec::new(),
        };
        text.sequence_prefix = text.post_processor_prefix()?;
        let add_bos = tokenizer_config
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if text.sequence_prefix.is_empty() && add_bos {
            text.sequence_prefix.extend(bos_id);
        }
        Ok(text)
    }

    /// Token ids of `text` without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
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
