//! Packing documents into the workload: `(num_sequences, seq_len)` token ids.
//!
//! Documents are tokenized without special tokens and joined into one stream, each followed
//! by the end-of-text token: `doc1 EOS doc2 EOS ...`. Sequence `i` is the tokenizer's
//! prefix (BOS for Llama-style tokenizers, nothing for Qwen / OLMo 2 ones) followed by the
//! next `seq_len - prefix` tokens of the stream. Sequences never overlap and nothing is
//! padded; a stream too short for the request is an error that says how many tokens there were.

use super::documents::for_each_document;
use super::tokenizer::TextTokenizer;
use crate::error::{Result, RuntimeError};
use std::ops::ControlFlow;
use std::path::Path;

/// The packed workload.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedTokens {
    /// `(num_sequences, seq_len)`.
    pub token_ids: Vec<u32>,
    /// Sequences.
    pub num_sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Documents read from the file.
    pub documents_used: usize,
}

/// Tokens of look-ahead dropped when only a prefix of a long document is tokenized, so the
/// tokens kept are those the whole document gives.
const PREFIX_SAFETY_TOKENS: usize = 64;

/// Reads documents from `path` and packs `num_sequences` sequences of `seq_len` tokens.
pub fn pack_documents(
    path: &Path,
    text_field: &str,
    tokenizer: &TextTokenizer,
    num_sequences: usize,
    seq_len: usize,
) -> Result<PackedTokens> {
    let prefix = &tokenizer.sequence_prefix;
    if num_sequences == 0 || seq_len == 0 {
        return Err(RuntimeError::InvalidRequest(
            "--num-samples and --seq-len must be at least 1".into(),
        ));
    }
    if seq_len <= prefix.len() {
        return Err(RuntimeError::InvalidRequest(format!(
            "--seq-len {seq_len} leaves no room after the {} prefix token(s) every sequence starts with",
            prefix.len()
        )));
    }
    let per_sequence = seq_len - prefix.len();
    let needed = num_sequences.checked_mul(seq_len).ok_or_else(|| {
        RuntimeError::InvalidRequest(format!(
            "--num-samples {num_sequences} x --seq-len {seq_len} tokens is more than this machine can count"
        ))
    })? - num_sequences * prefix.len();
    // Grown as documents arrive: a request larger than the data fails on the token count,
    // not on allocating room for it.
    let mut stream: Vec<u32> = Vec::with_capacity(needed.min(1 << 24) + 1);
    let documents_used = for_each_document(path, text_field, |text| {
        let remaining = needed - stream.len();
        stream.extend(encode_enough(tokenizer, text, remaining)?);
        stream.push(tokenizer.eos_id);
        Ok(if stream.len() >= needed {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    if documents_used == 0 {
        return Err(RuntimeError::Data {
            path: path.to_path_buf(),
            message: "has no text (no non-empty document); give a file with text in it".into(),
        });
    }
    if stream.len() < needed {
        let prefix_note = if prefix.is_empty() {
            String::new()
        } else {
            format!(" ({per_sequence} from the data after the prefix token each)")
        };
        return Err(RuntimeError::Data {
            path: path.to_path_buf(),
            message: format!(
                "gave {} tokens ({documents_used} documents, each followed by an end-of-text token); {num_sequences} sequences of {seq_len} tokens need {needed}{prefix_note}; give more text or lower --num-samples / --seq-len",
                stream.len()
            ),
        });
    }
    let mut token_ids = Vec::with_capacity(num_sequences * seq_len);
    for chunk in stream[..needed].chunks_exact(per_sequence) {
        token_ids.extend_from_slice(prefix);
        token_ids.extend_from_slice(chunk);
    }
    Ok(PackedTokens {
        token_ids,
        num_sequences,
        seq_len,
        documents_used,
    })
}

/// Tokens of `text`, or of a prefix of it long enough to give at least `needed` tokens
/// (a multi-gigabyte `.txt` is not tokenized whole to use its first pages).
fn encode_enough(tokenizer: &TextTokenizer, text: &str, needed: usize) -> Result<Vec<u32>> {
    let mut prefix_bytes = needed
        .saturating_add(PREFIX_SAFETY_TOKENS)
        .saturating_mul(16)
        .max(1 << 16);
    loop {
        if prefix_bytes >= text.len() {
            return tokenizer.encode(text);
        }
        let cut = whitespace_boundary(text, prefix_bytes);
        let mut ids = tokenizer.encode(&text[..cut])?;
        if ids.len() >= needed.saturating_add(PREFIX_SAFETY_TOKENS) {
            ids.truncate(ids.len() - PREFIX_SAFETY_TOKENS);
            return Ok(ids);
        }
        prefix_bytes = prefix_bytes.saturating_mul(2);
    }
}

/// A byte index at or before `at` that is a char boundary just after whitespace (or `at`'s
/// char boundary when there is no whitespace).
fn whitespace_boundary(text: &str, at: usize) -> usize {
    let mut cut = at.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut]
        .rfind(char::is_whitespace)
        .map(|i| i + text[i..].chars().next().map_or(1, char::len_utf8))
        .unwrap_or(cut)
}
