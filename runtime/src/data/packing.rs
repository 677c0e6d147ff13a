//! Packing documents into the workload: `(num_sequences, seq_len)` token ids.
//!
//! Documents are tokenized without special tokens and joined into one stream, each followed
//! by the end-of-text token: `doc1 EOS doc2 EOS ...`. Sequence `i` is the tokenizer's
//! prefix (BOS for Llama-style tokenizers, nothing for Qwen / OLMo 2 ones) followed by the
//! next `seq_len - prefix` tokens of the stream. Sequences never overlap and nothing is
//! padded; a stream too short for the request is an error that says how many tokens there were.

use super::documents::for_each_document;
use super::parallel_encode::{encode_each, encode_on_all_cores, encode_threads};
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

/// Bytes of text first tokenized per token needed.
const BYTES_PER_TOKEN_GUESS: usize = 6;

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
    let mut stream = DocumentStream {
        tokenizer,
        needed,
        ids: Vec::with_capacity(needed.min(1 << 24) + 1),
        batch: Vec::new(),
        batch_bytes: 0,
        used: 0,
    };
    let documents_read = for_each_document(path, text_field, |text| stream.add(text))?;
    stream.flush()?;
    let (documents_used, stream) = (stream.used, stream.ids);
    if documents_read == 0 {
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

/// Documents shorter than this are encoded in batches, several on all cores at once; longer
/// ones alone, cut into pieces on all cores ([`encode_on_all_cores`]).
const BATCHED_DOCUMENT_BYTES: usize = 1 << 20;

/// Text of the documents waiting in a batch before it is encoded.
const BATCH_BYTES: usize = 4 << 20;

/// The token stream the documents make (`doc1 EOS doc2 EOS ...`), documents encoded in batches
/// on all cores and taken in order until `needed` tokens are there.
struct DocumentStream<'t> {
    tokenizer: &'t TextTokenizer,
    needed: usize,
    /// The stream so far.
    ids: Vec<u32>,
    /// Documents read and not yet encoded.
    batch: Vec<String>,
    batch_bytes: usize,
    /// Documents whose tokens are in the stream.
    used: usize,
}

impl DocumentStream<'_> {
    fn full(&self) -> bool {
        self.ids.len() >= self.needed
    }

    /// Takes the next document; breaks once the stream holds enough tokens.
    fn add(&mut self, text: &str) -> Result<ControlFlow<()>> {
        if text.len() >= BATCHED_DOCUMENT_BYTES {
            self.flush()?;
            if !self.full() {
                let remaining = self.needed - self.ids.len();
                let ids = encode_enough(self.tokenizer, text, remaining)?;
                self.push(ids);
            }
        } else {
            self.batch_bytes += text.len();
            self.batch.push(text.to_string());
            if self.batch_bytes >= BATCH_BYTES {
                self.flush()?;
            }
        }
        Ok(match self.full() {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        })
    }

    /// Encodes the waiting documents and appends them in order, as many as the stream needs.
    fn flush(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if self.full() || batch.is_empty() {
            return Ok(());
        }
        let texts: Vec<&str> = batch.iter().map(String::as_str).collect();
        for ids in encode_each(self.tokenizer, &texts, encode_threads())? {
            self.push(ids);
            if self.full() {
                break;
            }
        }
        Ok(())
    }

    fn push(&mut self, ids: Vec<u32>) {
        self.ids.extend(ids);
        self.ids.push(self.tokenizer.eos_id);
        self.used += 1;
    }
}

/// Tokens of `text`, or of a prefix of it long enough to give at least `needed` tokens
/// (a multi-gigabyte `.txt` is not tokenized whole to use its first pages).
fn encode_enough(tokenizer: &TextTokenizer, text: &str, needed: usize) -> Result<Vec<u32>> {
    // About 4 bytes per token in English text: 6 is rarely short (then doubled), and
    // encodes little more than is kept.
    let mut prefix_bytes = needed
        .saturating_add(PREFIX_SAFETY_TOKENS)
        .saturating_mul(BYTES_PER_TOKEN_GUESS)
        .max(1 << 16);
    loop {
        if prefix_bytes >= text.len() {
            return encode_on_all_cores(tokenizer, text);
        }
        let cut = whitespace_boundary(text, prefix_bytes);
        let mut ids = encode_on_all_cores(tokenizer, &text[..cut])?;
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
