//! `score --per-record`: each record one sequence of its own length. What a record's tokens
//! are and which of them are scored:
//!
//! - a text record (`--text-field`): the tokenizer's prefix (BOS) and the text; every token
//!   after the first is scored;
//! - with `--prompt-field` / `--completion-field`: the prompt's tokens (its prefix and text,
//!   or the chat template's rendering) then the completion's, encoded apart and joined, as
//!   lm-eval-harness joins context and continuation; only completion tokens are scored,
//!   which is transformers' loss with the prompt positions' labels at -100;
//! - a `messages` record: the chat template's rendering (with the generation prompt when a
//!   completion follows); without a completion, all of it is scored.
//!
//! Records longer than `--max-length` keep their first tokens and are flagged truncated.
//! Empty records, missing or non-string fields and failing templates are errors naming the
//! record.

use crate::chat_template::{ChatTemplate, ordered_value};
use anyhow::{Result, anyhow};
use layerstream_runtime::data::{Record, TextTokenizer};
use minijinja::value::Value as TemplateValue;
use serde_json::Value;

/// Which fields say what.
pub struct RecordFields<'a> {
    /// The text of a plain record.
    pub text: &'a str,
    /// The prompt, when scoring completions.
    pub prompt: Option<&'a str>,
    /// The completion scored given the prompt.
    pub completion: Option<&'a str>,
    /// A field copied to the output as the record's id.
    pub id: Option<&'a str>,
}

/// A record as tokens, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRecord {
    /// Its number in the data.
    pub index: usize,
    /// The id field's value.
    pub id: Option<Value>,
    /// Token ids (at most `--max-length`).
    pub tokens: Vec<u32>,
    /// The first position whose token is scored (at least 1).
    pub scored_from: usize,
    /// Whether tokens were cut at `--max-length`.
    pub truncated: bool,
    /// What the chat template rendered (the prompt, or the conversation).
    pub rendered: Option<String>,
}

impl PreparedRecord {
    /// The position whose next-token distribution `--top-logprobs` reads: the last prompt
    /// position (the one before the first scored token).
    pub fn prompt_end(&self) -> usize {
        self.scored_from.min(self.tokens.len()) - 1
    }
}

/// A string field of `record`, or an error naming the record and the fields it has.
fn text_field<'r>(record: &'r Record, name: &str, flag: &str) -> Result<&'r str> {
    match record.fields.get(name) {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(record
            .error(format!("field {name:?} is {other}, not a string"))
            .into()),
        None => {
            let fields: Vec<&str> = record.fields.keys().map(String::as_str).collect();
            Err(record
                .error(format!(
                    "no field {name:?} (fields: {}); name the field with {flag}",
                    fields.join(", ")
                ))
                .into())
        }
    }
}

/// The record's `messages`, keys in their order (from its own text where it has one).
fn messages(record: &Record) -> Result<Option<TemplateValue>> {
    if !record.fields.contains_key("messages") {
        return Ok(None);
    }
    let whole = match &record.raw {
        Some(raw) => ordered_value(raw),
        None => ordered_value(&Value::Object(record.fields.clone()).to_string()),
    }
    .map_err(|e| record.error(e.to_string()))?;
    let messages = whole
        .get_attr("messages")
        .map_err(|e| record.error(e.to_string()))?;
    if messages.len().is_none_or(|n| n == 0) {
        return Err(record
            .error("field \"messages\" is not a non-empty list of {role, content}".into())
            .into());
    }
    Ok(Some(messages))
}

/// Turns `record` into tokens under the flags.
pub fn prepare(
    record: &Record,
    fields: &RecordFields,
    tokenizer: &TextTokenizer,
    template: Option<&ChatTemplate>,
    max_length: usize,
) -> Result<PreparedRecord> {
    let encode = |text: &str| -> Result<Vec<u32>> {
        tokenizer
            .encode(text)
            .map_err(|e| record.error(e.to_string()).into())
    };
    let render = |messages: &TemplateValue, generation: bool| -> Result<String> {
        let template = template.ok_or_else(|| {
            record.error("has \"messages\" but no chat template applies (the model has none, or --chat-template none); give --chat-template FILE".into())
        })?;
        template
            .render(messages, generation)
            .map_err(|e| record.error(format!("{e:#}")).into())
    };
    let completion = fields
        .completion
        .map(|name| text_field(record, name, "--completion-field"))
        .transpose()?;
    let conversation = messages(record)?;
    // The prompt (or the whole text), as tokens, and what a template rendered.
    let (mut tokens, rendered) = match (&conversation, fields.prompt) {
        (Some(messages), _) => {
            let text = render(messages, completion.is_some())?;
            (encode(&text)?, Some(text))
        }
        (None, Some(name)) => {
            let prompt = text_field(record, name, "--prompt-field")?;
            match template {
                Some(_) if completion.is_some() => {
                    let turn = minijinja::context! { role => "user", content => prompt };
                    let text = render(&TemplateValue::from(vec![turn]), true)?;
                    (encode(&text)?, Some(text))
                }
                _ => {
                    let mut tokens = tokenizer.sequence_prefix.clone();
                    tokens.extend(encode(prompt)?);
                    (tokens, None)
                }
            }
        }
        (None, None) => {
            let text = text_field(record, fields.text, "--text-field")?;
            let mut tokens = tokenizer.sequence_prefix.clone();
            tokens.extend(encode(text)?);
            (tokens, None)
        }
    };
    let scored_from = match completion {
        Some(completion) => {
            if tokens.is_empty() {
                return Err(record
                    .error("the prompt has no tokens (and the tokenizer puts none before a text): nothing predicts the completion's first token".into())
                    .into());
            }
            let from = tokens.len();
            tokens.extend(encode(completion)?);
            if tokens.len() == from {
                return Err(record.error("the completion is empty".into()).into());
            }
            from
        }
        None => 1,
    };
    if tokens.len() < 2 {
        return Err(record
            .error(format!(
                "{} token(s): nothing to score (an empty record?)",
                tokens.len()
            ))
            .into());
    }
    let truncated = tokens.len() > max_length;
    tokens.truncate(max_length);
    let id = match fields.id {
        Some(name) => Some(
            record
                .fields
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow!(record.error(format!("no id field {name:?}"))))?,
        ),
        None => None,
    };
    Ok(PreparedRecord {
        index: record.index,
        id,
        tokens,
        scored_from,
        truncated,
        rendered,
    })
}
