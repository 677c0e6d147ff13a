//! Rotary position embedding parameters from config.json, computed the way transformers
//! computes them (f32 arithmetic, `rotate_half` pairing of dimension i with i + head_dim/2):
//! the inverse frequencies, and the factor YaRN multiplies cos and sin by.

use crate::config::ModelConfig;
use crate::error::Result;
use serde_json::Value;

/// RoPE types this build computes exactly.
const SUPPORTED_ROPE_TYPES: &[&str] = &["default", "linear", "dynamic", "llama3", "yarn"];

/// Inverse frequencies of the rotary embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    /// `rope_type` as configured.
    pub rope_type: String,
    /// Base wavelength.
    pub theta: f64,
    /// One inverse frequency per rotated pair, `(head_dim / 2)`.
    pub inv_freq: Vec<f32>,
    /// What cos and sin are multiplied by (YaRN's attention factor; 1 otherwise).
    pub attention_scaling: f32,
}

impl RopeSpec {
    /// Reads RoPE settings from `rope_parameters` (transformers 5) or from `rope_theta` and
    /// `rope_scaling` (older configs), for heads of width `head_dim` rotated whole (a
    /// `partial_rotary_factor` other than 1 is refused: these families' transformers code
    /// rotates whole heads).
    pub fn from_config(config: &ModelConfig, head_dim: usize) -> Result<Self> {
        Self::read(config, head_dim, None)
    }

    /// As [`Self::from_config`], and for a family whose attention rotates the first
    /// `int(head_dim * partial_rotary_factor)` dimensions of each head (NeoX halves within
    /// them) and passes the rest (`default_partial`: `Some` of the factor when config.json
    /// does not say), those dimensions only.
    pub fn read(
        config: &ModelConfig,
        head_dim: usize,
        default_partial: Option<f64>,
    ) -> Result<Self> {
        let params = config
            .rope_parameters
            .as_ref()
            .or(config.rope_scaling.as_ref())
            .filter(|v| !v.is_null());
        let get = |key: &str| params.and_then(|p| p.get(key)).filter(|v| !v.is_null());
        let rope_type = get("rope_type")
            .or_else(|| get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let theta = get("rope_theta")
            .and_then(Value::as_f64)
            .or(config.rope_theta)
            .unwrap_or(10_000.0);
        let partial = get("partial_rotary_factor")
            .and_then(Value::as_f64)
            .or(config.partial_rotary_factor)
            .unwrap_or(default_partial.unwrap_or(1.0));
        if default_partial.is_none() && partial != 1.0 {
            return Err(config.unsupported(
                format!("partial_rotary_factor {partial}"),
                format!("{} rotates whole heads in transformers; this config would not load there either", config.model_type),
            ));
        }
        // transformers: `dim = int(head_dim * partial_rotary_factor)`.
        let rotary_dim = (head_dim as f64 * partial) as usize;
        if !(partial > 0.0 && partial <= 1.0) || rotary_dim < 2 || !rotary_dim.is_multiple_of(2) {
            return Err(config.error(format!(
                "partial_rotary_factor {partial} with head_dim {head_dim} rotates {rotary_dim} dimensions; it must be in (0, 1] and rotate an even number, at least 2"
            )));
        }
        let head_dim = rotary_dim;
        if !SUPPORTED_ROPE_TYPES.contains(&rope_type.as_str()) {
            return Err(config.unsupported(
                format!("rope_type {rope_type:?}"),
                format!("supported rope types: {}", SUPPORTED_ROPE_TYPES.join(", ")),
            ));
        }
        let number = |key: &str| -> Result<f64> {
            get(key).and_then(Value::as_f64).ok_or_else(|| {
                config.error(format!(
                    "rope_type {rope_type:?} needs the key `{key}` in rope_parameters / rope_scaling"
                ))
            })
        };
        let mut inv_freq = default_inv_freq(theta, head_dim);
        let mut attention_scaling = 1.0f32;
        match rope_type.as_str() {
            // "dynamic" rescales only past max_position_embeddings, which runs never reach
            // (sequence lengths are checked against it).
            "default" | "dynamic" => {}
            "linear" => {
                let factor = number("factor")? as f32;
                inv_freq.iter_mut().for_each(|f| *f /= factor);
            }
            "yarn" => {
                let original = get("original_max_position_embeddings")
                    .and_then(Value::as_f64)
                    .unwrap_or(config.max_position_embeddings as f64);
                let yarn = Yarn {
                    factor: number("factor")?,
                    beta_fast: get("beta_fast").and_then(Value::as_f64).unwrap_or(32.0),
                    beta_slow: get("beta_slow").and_then(Value::as_f64).unwrap_or(1.0),
                    original_max_positions: original,
                    truncate: get("truncate").and_then(Value::as_bool).unwrap_or(true),
                    attention_factor: get("attention_factor").and_then(Value::as_f64),
                    mscale: get("mscale").and_then(Value::as_f64),
                    mscale_all_dim: get("mscale_all_dim").and_then(Value::as_f64),
                };
                let (frequencies, scaling) = yarn.inv_freq(theta, head_dim);
                inv_freq = frequencies;
                attention_scaling = scaling;
            }
            "llama3" => {
                let original = get("original_max_position_embeddings")
                    .and_then(Value::as_f64)
                    .unwrap_or(config.max_position_embeddings as f64);
                inv_freq = llama3_inv_freq(
                    &inv_freq,
                    number("factor")? as f32,
                    number("low_freq_factor")? as f32,
                    number("high_freq_factor")? as f32,
                    original as f32,
                );
            }
            _ => unreachable!("checked against SUPPORTED_ROPE_TYPES"),
        }
        Ok(RopeSpec {
            rope_type,
            theta,
            inv_freq,
            attention_scaling,
        })
    }
}

/// `1 / theta^(2i / dim)` in f32, as transformers' default RoPE.
fn default_inv_freq(theta: f64, dim: usize) -> Vec<f32> {
    (0..dim)
        .step_by(2)
        .map(|i| 1.0f32 / (theta as f32).powf(i as f32 / dim as f32))
        .collect()
}

/// YaRN (Peng et al. 2023) as transformers' `_compute_yarn_parameters` computes it.
struct Yarn {
    factor: f64,
    beta_fast: f64,
    beta_slow: f64,
    /// The context the correction range is measured against (`original_max_position_embeddings`).
    original_max_positions: f64,
    /// Round the correction range outwards to whole dimensions (`truncate`, default true).
    truncate: bool,
    attention_factor: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
}

impl Yarn {
    /// Inverse frequencies (f32, blended between interpolation and extrapolation by a linear
    /// ramp between the correction dimensions) and the attention factor.
    fn inv_freq(&self, theta: f64, dim: usize) -> (Vec<f32>, f32) {
        let get_mscale = |scale: f64, m: f64| match scale <= 1.0 {
            true => 1.0,
            false => 0.1 * m * scale.ln() + 1.0,
        };
        let attention =
            self.attention_factor
                .unwrap_or_else(|| match (self.mscale, self.mscale_all_dim) {
                    (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                        get_mscale(self.factor, m) / get_mscale(self.factor, all)
                    }
                    _ => get_mscale(self.factor, 1.0),
                });
        let correction_dim = |rotations: f64| {
            dim as f64
                * (self.original_max_positions / (rotations * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * theta.ln())
        };
        let (mut low, mut high) = (
            correction_dim(self.beta_fast),
            correction_dim(self.beta_slow),
        );
        if self.truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
        if low == high {
            high += 0.001; // transformers: prevents a division by zero
        }
        let factor = self.factor as f32;
        let inv_freq = (0..dim / 2)
            .map(|i| {
                let pos_freq = (theta as f32).powf((2 * i) as f32 / dim as f32);
                let (extrapolation, interpolation) = (1.0 / pos_freq, 1.0 / (factor * pos_freq));
                let ramp = ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                let extrapolation_factor = 1.0 - ramp;
                interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
            })
            .collect();
        (inv_freq, attention as f32)
    }
}

/// Llama 3.1 frequency scaling: long wavelengths divided by `factor`, short ones kept, the
/// band between interpolated smoothly.
fn llama3_inv_freq(
    inv_freq: &[f32],
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_max_positions: f32,
) -> Vec<f32> {
    let low_freq_wavelen = original_max_positions / low_freq_factor;
    let high_freq_wavelen = original_max_positions / high_freq_factor;
    inv_freq
        .iter()
        .map(|&freq| {
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_freq_wavelen {
                freq
            } else if wavelen > low_freq_wavelen {
                freq / factor
            } else {
                let smooth = (original_max_positions / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * freq / factor + smooth * freq
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ModelConfig {
        let text = format!(
            r#"{{"model_type":"llama","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,
            "intermediate_size":128,"vocab_size":100,"max_position_embeddings":256{extra}}}"#
        );
        ModelConfig::parse(&text, "config.json".into()).unwrap()
    }

    #[test]
    fn default_frequencies_follow_theta() {
        let rope = RopeSpec::from_config(&config(r#","rope_theta":10000.0"#), 16).unwrap();
        assert_eq!(rope.inv_freq.len(), 8);
        assert_eq!(rope.inv_freq[0], 1.0);
        assert!((rope.inv_freq[1] - 10000f32.powf(-2.0 / 16.0)).abs() < 1e-7);
    }

    #[test]
    fn legacy_and_v5_llama3_configs_agree() {
        let legacy = config(
            r#","rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}"#,
        );
        let v5 = config(
            r#","rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}"#,
        );
        let a = RopeSpec::from_config(&legacy, 16).unwrap();
        let b = RopeSpec::from_config(&v5, 16).unwrap();
        assert_eq!(a, b);
        let plain = default_inv_freq(500000.0, 16);
        // Short wavelengths kept, long ones divided by the factor.
        assert_eq!(a.inv_freq[0], plain[0]);
        assert_eq!(a.inv_freq[7], plain[7] / 8.0);
    }

    #[test]
    fn unknown_rope_type_is_refused_with_the_list() {
        let c = config(r#","rope_scaling":{"type":"longrope","factor":4.0}"#);
        let err = RopeSpec::from_config(&c, 16).unwrap_err().to_string();
        assert!(err.contains("longrope") && err.contains("yarn"), "{err}");
    }

    /// GPT-OSS's YaRN (theta 150000, factor 32, beta 32 / 1, 4096 original positions,
    /// `truncate: false`, head_dim 64): the anchors transcribed from transformers'
    /// `_compute_yarn_parameters` (research note), and the attention factor 0.1 ln 32 + 1.
    #[test]
    fn yarn_matches_transformers_for_gpt_oss() {
        let yarn = |truncate: bool| {
            config(&format!(
                r#","rope_parameters":{{"rope_type":"yarn","rope_theta":150000.0,"factor":32.0,
                "beta_fast":32.0,"beta_slow":1.0,"original_max_position_embeddings":4096,
                "truncate":{truncate}}}"#
            ))
        };
        let rope = RopeSpec::from_config(&yarn(false), 64).unwrap();
        assert_eq!(rope.inv_freq.len(), 32);
        assert!((rope.attention_scaling - 1.346_573_6).abs() < 1e-6);
        for (i, expect) in [
            (0, 1.0f32),
            (8, 0.050_813_3),
            (12, 6.794_96e-3),
            (17, 1.293_19e-4),
            (18, 3.830_88e-5),
            (31, 3.023_51e-7),
        ] {
            // The anchors carry 6 significant digits: half a unit of the last one.
            let got = rope.inv_freq[i];
            assert!(
                (got - expect).abs() <= 5e-6 * expect,
                "inv_freq[{i}] {got} vs {expect}"
            );
        }
        // Below the correction range: extrapolation (the plain frequency); above: divided
        // by the factor.
        let plain = default_inv_freq(150000.0, 64);
        assert_eq!(rope.inv_freq[3], plain[3]);
        assert!((rope.inv_freq[25] - plain[25] / 32.0).abs() <= 1e-6 * plain[25]);
        // truncate (the default): the range becomes whole dimensions 8 ..= 18.
        let truncated = RopeSpec::from_config(&yarn(true), 64).unwrap();
        assert_eq!(truncated.inv_freq[8], plain[8]);
        assert!((truncated.inv_freq[18] - plain[18] / 32.0).abs() <= 1e-6 * plain[18]);
        assert_ne!(truncated.inv_freq[12], rope.inv_freq[12]);
        // Other rope types leave cos and sin as they are.
        let llama = RopeSpec::from_config(&config(r#","rope_theta":10000.0"#), 16).unwrap();
        assert_eq!(llama.attention_scaling, 1.0);
    }
}
