//! The numbers of config.json checked before anything is built from them: sizes within
//! what a checkpoint can hold (so a damaged file is refused at once instead of allocating
//! tables for a trillion layers), epsilons, RoPE bases and factors finite and positive (a
//! zero or negative one makes every activation NaN), token ids within the vocabulary.

use crate::config::ModelConfig;
use crate::error::Result;
use serde_json::Value;

/// Largest layer, head or expert count accepted (the largest released models have a few
/// hundred layers and experts).
pub const MAX_COUNT: usize = 1 << 16;

/// Largest width or vocabulary accepted.
pub const MAX_WIDTH: usize = 1 << 24;

/// Checks the values of a parsed config.
pub fn check_values(config: &ModelConfig) -> Result<()> {
    check_sizes(config)?;
    if config.max_position_embeddings == 0 {
        return Err(config.error(
            "`max_position_embeddings` is 0; it must be the longest sequence the model takes",
        ));
    }
    check_floats(config)?;
    check_rope(config)?;
    if config.sliding_window == Some(0) && config.use_sliding_window != Some(false) {
        return Err(config.error(
            "`sliding_window` is 0, which hides every token; use a positive window or null",
        ));
    }
    for key in ["bos_token_id", "eos_token_id"] {
        check_token_ids(config, key)?;
    }
    Ok(())
}

fn check_sizes(config: &ModelConfig) -> Result<()> {
    let counts = [
        ("num_hidden_layers", Some(config.num_hidden_layers)),
        ("num_attention_heads", Some(config.num_attention_heads)),
        ("num_key_value_heads", config.num_key_value_heads),
        ("num_experts", config.num_experts),
        ("num_local_experts", config.num_local_experts),
        ("num_experts_per_tok", config.num_experts_per_tok),
    ];
    let widths = [
        ("hidden_size", Some(config.hidden_size)),
        ("intermediate_size", Some(config.intermediate_size)),
        ("vocab_size", Some(config.vocab_size)),
        ("head_dim", config.head_dim),
        ("moe_intermediate_size", config.moe_intermediate_size),
        (
            "shared_expert_intermediate_size",
            config.shared_expert_intermediate_size,
        ),
    ];
    for (list, limit) in [(&counts, MAX_COUNT), (&widths, MAX_WIDTH)] {
        for &(key, value) in list.iter() {
            if let Some(value) = value.filter(|&v| v > limit) {
                return Err(config.error(format!(
                    "`{key}` is {value}, beyond what any checkpoint holds (at most {limit} here); the file is damaged or was edited"
                )));
            }
        }
    }
    Ok(())
}

fn check_floats(config: &ModelConfig) -> Result<()> {
    if let Some(eps) = config.rms_norm_eps.filter(|e| !e.is_finite() || *e < 0.0) {
        return Err(config.error(format!(
            "`rms_norm_eps` is {eps}; it must be a small non-negative number (e.g. 1e-6)"
        )));
    }
    if let Some(clip) = config.clip_qkv.filter(|c| !c.is_finite() || *c <= 0.0) {
        return Err(config.error(format!(
            "`clip_qkv` is {clip}; it must be a positive number (or null for no clamp)"
        )));
    }
    if let Some(f) = config
        .partial_rotary_factor
        .filter(|f| !f.is_finite() || *f <= 0.0 || *f > 1.0)
    {
        return Err(config.error(format!(
            "`partial_rotary_factor` is {f}; it must be in (0, 1]"
        )));
    }
    Ok(())
}

/// `rope_theta`, and `rope_scaling` / `rope_parameters`: an object (or null) whose numbers
/// are finite and positive.
fn check_rope(config: &ModelConfig) -> Result<()> {
    if let Some(theta) = config.rope_theta {
        positive_number(config, "rope_theta", theta)?;
    }
    for (key, value) in [
        ("rope_scaling", &config.rope_scaling),
        ("rope_parameters", &config.rope_parameters),
    ] {
        let Some(value) = value.as_ref().filter(|v| !v.is_null()) else {
            continue;
        };
        let Some(object) = value.as_object() else {
            return Err(config.error(format!(
                "`{key}` is {value}; it must be an object such as {{\"rope_type\": \"llama3\", \"factor\": 8.0, ...}} or null"
            )));
        };
        for field in [
            "rope_theta",
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
            "beta_fast",
            "beta_slow",
            "attention_factor",
        ] {
            match object.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) => {
                    positive_number(config, &format!("{key}.{field}"), n.as_f64().unwrap_or(0.0))?
                }
                Some(other) => {
                    return Err(config.error(format!(
                        "`{key}.{field}` is {other}; it must be a positive number"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn positive_number(config: &ModelConfig, key: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(config.error(format!(
            "`{key}` is {value}; it must be a positive number (RoPE with it gives NaN or infinite activations)"
        )))
    }
}

/// A token id (or list of them) that fits the vocabulary.
fn check_token_ids(config: &ModelConfig, key: &str) -> Result<()> {
    let Some(value) = config.raw.get(key).filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let ids: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for id in ids {
        match id.as_u64() {
            Some(n) if (n as u128) < config.vocab_size as u128 => {}
            Some(n) => {
                return Err(config.error(format!(
                    "`{key}` {n} is not a token of the vocabulary (vocab_size {})",
                    config.vocab_size
                )));
            }
            None => {
                return Err(config.error(format!(
                    "`{key}` is {id}; it must be a token id (a non-negative integer) or a list of them"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::ModelConfig;

    const BASE: &str = r#""model_type":"llama","hidden_size":64,"num_hidden_layers":2,
        "num_attention_heads":4,"intermediate_size":128,"vocab_size":100,
        "max_position_embeddings":256"#;

    fn refused(extra: &str) -> String {
        let text = format!("{{{BASE},{extra}}}");
        match ModelConfig::parse(&text, "/m/config.json".into()) {
            Ok(_) => panic!("{extra} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn values_that_make_nan_or_huge_tables_are_refused_naming_the_key() {
        for (extra, key) in [
            (r#""rope_theta":0"#, "rope_theta"),
            (r#""rope_theta":-5"#, "rope_theta"),
            (
                r#""rope_scaling":{"rope_type":"llama3","factor":0,"low_freq_factor":1,"high_freq_factor":4}"#,
                "rope_scaling.factor",
            ),
            (r#""rope_scaling":"llama3""#, "rope_scaling"),
            (r#""rope_scaling":8"#, "rope_scaling"),
            (r#""rms_norm_eps":-1e-6"#, "rms_norm_eps"),
            (r#""clip_qkv":-1.0"#, "clip_qkv"),
            (r#""sliding_window":0"#, "sliding_window"),
            (r#""eos_token_id":4294967297"#, "eos_token_id"),
            (r#""eos_token_id":[1,100]"#, "eos_token_id"),
            (r#""bos_token_id":"1""#, "bos_token_id"),
            (r#""num_experts":10000000"#, "num_experts"),
        ] {
            let err = refused(extra);
            assert!(
                err.contains(key) && err.contains("/m/config.json"),
                "{extra}: {err}"
            );
        }
        let layers = format!(
            "{{{}}}",
            BASE.replace(
                "\"num_hidden_layers\":2",
                "\"num_hidden_layers\":1000000000000"
            )
        );
        let err = ModelConfig::parse(&layers, "c.json".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_hidden_layers"), "{err}");
    }

    #[test]
    fn ordinary_values_pass() {
        let text = format!(
            "{{{BASE},\"rope_theta\":500000.0,\"rms_norm_eps\":1e-5,\"eos_token_id\":[1,2],\"sliding_window\":null,\"rope_scaling\":null}}"
        );
        ModelConfig::parse(&text, "c.json".into()).unwrap();
    }
}
