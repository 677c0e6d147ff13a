//! Chat templates (`score --chat-template auto|none|FILE`), rendered as transformers'
//! `apply_chat_template(..., tokenize=False)` renders them: Jinja with `trim_blocks` and
//! `lstrip_blocks`, loop controls, the tokenizer's special tokens (`bos_token`, `eos_token`,
//! ...) in the context with `messages` and `add_generation_prompt`, `raise_exception`,
//! `strftime_now`, Python's string and dict methods, and `tojson` as Python's `json.dumps`
//! writes it (`", "` and `": "`, non-ASCII kept, keys in their order). Messages come as
//! minijinja values parsed from the record's own text, so objects keep their key order. The template comes from the model folder's
//! `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template` (a string, or the
//! entry named `default` of a list), or from a file.

use anyhow::{Context, Result, anyhow, bail};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{Map, Value as Json};
use std::path::{Path, PathBuf};

/// A loaded chat template with the tokenizer's special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where it came from, for messages.
    pub source: PathBuf,
    special_tokens: Map<String, Json>,
}

/// `--chat-template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The model's, when it has one.
    Auto,
    /// Never.
    None,
    /// This file's.
    File(PathBuf),
}

impl std::str::FromStr for TemplateChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "auto" => TemplateChoice::Auto,
            "none" => TemplateChoice::None,
            path => TemplateChoice::File(PathBuf::from(path)),
        })
    }
}

/// The template `choice` names for the model in `model_dir` (`None`: no template applies).
pub fn choose(choice: &TemplateChoice, model_dir: &Path) -> Result<Option<ChatTemplate>> {
    let tokenizer_config = model_dir.join("tokenizer_config.json");
    let config: Map<String, Json> = match std::fs::read(&tokenizer_config) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a JSON object", tokenizer_config.display()))?,
        Err(_) => Map::new(),
    };
    let (source, text) = match choice {
        TemplateChoice::None => return Ok(None),
        TemplateChoice::File(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--chat-template {}: cannot be read", path.display()))?;
            (path.clone(), text)
        }
        TemplateChoice::Auto => {
            let file = model_dir.join("chat_template.jinja");
            match std::fs::read_to_string(&file) {
                Ok(text) => (file, text),
                Err(_) => match template_in_config(&config, &tokenizer_config)? {
                    Some(text) => (tokenizer_config.clone(), text),
                    None => return Ok(None),
                },
            }
        }
    };
    let special_tokens = config
        .iter()
        .filter(|(k, _)| k.ends_with("_token"))
        .filter_map(|(k, v)| token_text(v).map(|t| (k.clone(), Json::String(t))))
        .collect();
    ChatTemplate::new(source, text, special_tokens).map(Some)
}

/// `chat_template` of tokenizer_config.json: a string, or `[{name, template}]` (the
/// `default` one).
fn template_in_config(config: &Map<String, Json>, path: &Path) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(text)) => Ok(Some(text.clone())),
        Some(Json::Array(named)) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str().map(str::to_string))
            .map(Some)
            .ok_or_else(|| {
                anyhow!(
                    "{}: chat_template lists templates but none named \"default\"; give --chat-template FILE",
                    path.display()
                )
            }),
        Some(other) => bail!(
            "{}: chat_template is {other}, not a template string",
            path.display()
        ),
    }
}

/// A special token as tokenizer_config.json writes it: a string or `{"content": ...}`.
fn token_text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

impl ChatTemplate {
    fn new(source: PathBuf, text: String, special_tokens: Map<String, Json>) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", text)
            .map_err(|e| anyhow!("{}: not a valid chat template: {e:#}", source.display()))?;
        Ok(ChatTemplate {
            env,
            source,
            special_tokens,
        })
    }

    /// `messages` (a list of `{role, content}`) rendered, with the assistant's turn opened
    /// when `add_generation_prompt`.
    pub fn render(&self, messages: &Value, add_generation_prompt: bool) -> Result<String> {
        let specials = Value::from(minijinja::value::Serde(&self.special_tokens));
        let context = minijinja::context! {
            messages => messages.clone(),
            add_generation_prompt => add_generation_prompt,
            ..specials
        };
        let template = self.env.get_template("chat").expect("added in new");
        template.render(context).map_err(|e| {
            let detail = match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or_default().to_string(),
                _ => format!("{e:#}"),
            };
            anyhow!(
                "the chat template ({}) fails: {detail}",
                self.source.display()
            )
        })
    }
}

/// `text` (JSON) as a template value, objects keeping their key order.
pub fn ordered_value(text: &str) -> Result<Value> {
    serde_json::from_str::<Value>(text).map_err(|e| anyhow!("not valid JSON: {e}"))
}

/// transformers' `strftime_now(format)`: the local time now, formatted.
fn strftime_now(format: String) -> Result<String, Error> {
    let format = std::ffi::CString::new(format)
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "a format with a NUL"))?;
    let mut buffer = vec![0u8; 256];
    // SAFETY: localtime_r and strftime write into the buffers given, bounded by their sizes.
    let written = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut parts: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut parts);
        libc::strftime(
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            format.as_ptr(),
            &parts,
        )
    };
    buffer.truncate(written);
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False,
/// indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    python_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// `json.dumps` layout: `", "` and `": "` separators without indent; with one, each item
/// on its own line indented and `","` / `": "`.
fn python_json(
    value: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    let items: Vec<Value> = match value.kind() {
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => value.try_iter()?.collect(),
        _ => Vec::new(),
    };
    let (open, close) = match value.kind() {
        ValueKind::Map => ('{', '}'),
        _ => ('[', ']'),
    };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => {
            // Python writes floats with a fraction (1.0, not 1).
            let f = f64::try_from(value.clone())?;
            match f.fract() == 0.0 && f.abs() < 1e16 {
                true => out.push_str(&format!("{f:.1}")),
                false => out.push_str(
                    &serde_json::Number::from_f64(f).map_or("NaN".into(), |n| n.to_string()),
                ),
            }
        }
        ValueKind::String => {
            out.push_str(&Json::String(value.as_str().unwrap_or_default().into()).to_string())
        }
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable if items.is_empty() => {
            out.push(open);
            out.push(close);
        }
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            out.push(open);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                if open == '{' {
                    out.push_str(&Json::String(item.to_string()).to_string());
                    out.push_str(": ");
                    python_json(&value.get_item(item)?, indent, depth + 1, out)?;
                } else {
                    python_json(item, indent, depth + 1, out)?;
                }
            }
            newline(out, depth);
            out.push(close);
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot write a {other}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> ChatTemplate {
        let specials = Map::from_iter([("bos_token".to_string(), Json::from("<s>"))]);
        ChatTemplate::new("t".into(), text.into(), specials).unwrap()
    }

    #[test]
    fn renders_with_jinja_whitespace_rules_and_python_methods() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}\n  {% if loop.first %}[{{ m.role | upper }}]{% endif %}\n{{ m['content'].strip() }}|{% endfor %}{% if add_generation_prompt %}>{% endif %}\n",
        );
        let messages = ordered_value(
            r#"[{"role": "user", "content": "  hi  "}, {"role": "assistant", "content": "yo"}]"#,
        )
        .unwrap();
        assert_eq!(t.render(&messages, true).unwrap(), "<s>[USER]hi|yo|>");
        assert_eq!(t.render(&messages, false).unwrap(), "<s>[USER]hi|yo|");
    }

    #[test]
    fn tojson_writes_as_python_json_dumps() {
        let t = template("{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}");
        let messages = ordered_value(r#"[{"b": 1, "a": [1.0, "é"], "c": {}}]"#).unwrap();
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "[{\"b\": 1, \"a\": [1.0, \"é\"], \"c\": {}}]|{\n  \"b\": 1,\n  \"a\": [\n    1.0,\n    \"é\"\n  ],\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn raise_exception_says_what_the_template_says() {
        let t = template("{{ raise_exception('roles must alternate') }}");
        let error = t.render(&ordered_value("[]").unwrap(), false).unwrap_err();
        assert!(
            error.to_string().contains("roles must alternate"),
            "{error}"
        );
    }
}
