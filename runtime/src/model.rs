//! A model folder opened and checked: config.json read into a spec, safetensors mapped, and
//! every tensor the forward pass will need verified against the shapes config.json implies,
//! before any work starts.

use crate::arch::quantization::FP8_DTYPE;
use crate::arch::{self, ExpertNaming, FeedForward, ModelSpec, spec};
use crate::config::ModelConfig;
use crate::error::{Result, RuntimeError};
use crate::weights::WeightStore;
use layerstream_planner::{TensorClass, TensorEntry};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An opened, validated model.
pub struct Model {
    /// The folder.
    pub dir: PathBuf,
    /// config.json.
    pub config: ModelConfig,
    /// What the backends run.
    pub spec: ModelSpec,
    /// The mapped weights and their inventory.
    pub weights: WeightStore,
}

/// MoE layers whose checkpoint holds their experts fused over the expert axis
/// (`mlp.experts.gate_up_proj`, transformers v5's layout) read them as
/// [`ExpertNaming::Stacked`]; GPT-OSS names its own fused layout and is left as it is.
fn read_stacked_experts_where_stored(spec: &mut ModelSpec, weights: &WeightStore) {
    for (layer, feed_forward) in spec.feed_forward.iter_mut().enumerate() {
        if let FeedForward::Moe(moe) = feed_forward
            && matches!(
                moe.naming,
                ExpertNaming::MlpExperts | ExpertNaming::BlockSparseMoe
            )
            && weights.contains(&format!("model.layers.{layer}.mlp.experts.gate_up_proj"))
        {
            moe.naming = ExpertNaming::Stacked;
        }
    }
}

/// Fills the spec's FP8 weights with the decoder-layer tensors stored as F8_E4M3, and
/// refuses FP8 tensors that config.json does not declare or that are fused over experts.
fn read_fp8_where_stored(
    spec: &mut ModelSpec,
    weights: &WeightStore,
    config: &ModelConfig,
) -> Result<()> {
    let stored: BTreeSet<String> = weights
        .inventory()
        .tensors
        .iter()
        .filter(|t| t.dtype.name() == FP8_DTYPE)
        .filter(|t| matches!(t.class, TensorClass::Layer(l) if l < spec.num_layers))
        .map(|t| t.name.clone())
        .collect();
    let Some(first) = stored.first() else {
        return Ok(());
    };
    let file = weights.file_of(weights.entry(first, "")?).to_path_buf();
    let Some(fp8) = &mut spec.fp8 else {
        return Err(RuntimeError::UnsupportedFeature {
            path: file,
            what: format!("{first} stored as {FP8_DTYPE} while {} has no quantization_config", config.path.display()),
            hint: "FP8 checkpoints declare `\"quantization_config\": {\"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]}`; restore the config.json that came with these weights".into(),
        });
    };
    if let Some(fused) = stored
        .iter()
        .find(|n| n.ends_with("experts.gate_up_proj") || n.ends_with("experts.down_proj"))
    {
        return Err(RuntimeError::UnsupportedFeature {
            path: file,
            what: format!("FP8 experts fused over the expert axis ({fused})"),
            hint: "FP8 experts are read per expert (`mlp.experts.{e}.gate_proj.weight` with its weight_scale_inv), as the released FP8 checkpoints store them".into(),
        });
    }
    fp8.stored = Arc::new(stored);
    Ok(())
}

impl Model {
    /// Opens `dir`, reading config.json and the safetensors headers (no tensor data).
    pub fn open(dir: &Path) -> Result<Self> {
        let config = ModelConfig::load(dir)?;
        let mut spec = arch::model_spec(&config)?;
        let weights = WeightStore::open(dir)?;
        read_stacked_experts_where_stored(&mut spec, &weights);
        read_fp8_where_stored(&mut spec, &weights, &config)?;
        let model = Model {
            dir: dir.to_path_buf(),
            config,
            spec,
            weights,
        };
        model.validate()?;
        Ok(model)
    }

    /// The token embedding `(vocab, hidden)`.
    pub fn embedding(&self) -> &TensorEntry {
        self.weights
            .entry(spec::EMBED_TOKENS, "")
            .expect("validated when the model was opened")
    }

    /// The LM head `(vocab, hidden)`: the embedding when tied.
    pub fn lm_head(&self) -> &TensorEntry {
        self.weights
            .entry(self.spec.lm_head_name(), "")
            .expect("validated when the model was opened")
    }

    /// The final norm's weight in f32, as the norm multiplies by it (`1 + w` for zero-centred
    /// norms, added in f32 as transformers does).
    pub fn final_norm(&self) -> Result<Vec<f32>> {
        let mut weight = self.weights.read_f32(spec::FINAL_NORM)?;
        if self.spec.zero_centred_norms {
            weight.iter_mut().for_each(|w| *w += 1.0);
        }
        Ok(weight)
    }

    /// Refuses sequences longer than the model supports.
    pub fn check_seq_len(&self, seq_len: usize) -> Result<()> {
        let max = self.spec.max_position_embeddings;
        if seq_len > max {
            return Err(RuntimeError::InvalidRequest(format!(
                "--seq-len {seq_len} is above the model's max_position_embeddings {max} ({}); use --seq-len {max} or less",
                self.config.path.display()
            )));
        }
        Ok(())
    }

    /// Why a layer tensor may be missing, and what to do.
    fn missing_tensor_hint(&self, layer: usize) -> String {
        // A hybrid model's schedule says which mixer a layer has.
        let mixer = match (
            self.spec.mixer_names().get(layer),
            self.spec.delta_net(layer),
        ) {
            (None, _) => String::new(),
            (Some(_), Some(_)) => {
                " (a Gated DeltaNet layer by its layer_types / full_attention_interval)".to_string()
            }
            (Some(_), None) => {
                " (a full attention layer by its layer_types / full_attention_interval)".to_string()
            }
        };
        format!(
            "layer {layer} of a {} model as {} describes it{mixer} needs it; the checkpoint is incomplete, was saved by another architecture, or config.json does not match it",
            self.spec.family.model_type(),
            self.config.path.display()
        )
    }

    /// Checks every tensor the forward pass reads, so a bad checkpoint fails before work starts.
    fn validate(&self) -> Result<()> {
        let s = &self.spec;
        self.weights.check(
            spec::EMBED_TOKENS,
            &[s.vocab_size, s.hidden_size],
            "vocab_size, hidden_size",
        )?;
        self.weights
            .check(spec::FINAL_NORM, &[s.hidden_size], "hidden_size")?;
        if !s.tied_embeddings {
            if !self.weights.contains(spec::LM_HEAD) {
                return Err(RuntimeError::MissingTensor {
                    name: spec::LM_HEAD.into(),
                    model_dir: self.dir.clone(),
                    hint: "config.json has tie_word_embeddings false (or unset), so the model needs its own LM head; if it shares the embedding, set \"tie_word_embeddings\": true".into(),
                });
            }
            self.weights.check(
                spec::LM_HEAD,
                &[s.vocab_size, s.hidden_size],
                "vocab_size, hidden_size",
            )?;
        }
        for layer in 0..s.num_layers {
            for tensor in s.layer_tensors(layer) {
                self.weights
                    .check_ref(&tensor.source, &tensor.shape, tensor.shape_reason)
                    .map_err(|e| match e {
                        // A missing FP8 scale keeps the hint that says what it is.
                        RuntimeError::MissingTensor {
                            name, model_dir, ..
                        } if name == tensor.name() => RuntimeError::MissingTensor {
                            hint: self.missing_tensor_hint(layer),
                            name,
                            model_dir,
                        },
                        other => other,
                    })?;
            }
        }
        if let Some(extra) = self.weights.inventory().tensors.iter().find(
            |t| matches!(t.class, TensorClass::Layer(l) if l >= s.num_layers + s.unused_mtp_layers),
        ) {
            return Err(RuntimeError::ShapeMismatch {
                name: extra.name.clone(),
                path: self.weights.file_of(extra).to_path_buf(),
                expected: vec![],
                found: extra.shape.clone(),
                reason: format!(
                    "config.json has num_hidden_layers {} and num_nextn_predict_layers {}, so there is no such layer (multi-token-prediction layers after the last one are known and unused only when num_nextn_predict_layers declares them)",
                    s.num_layers, s.unused_mtp_layers
                ),
            });
        }
        Ok(())
    }
}
