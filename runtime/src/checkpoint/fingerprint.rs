//! Fingerprints that decide whether an output folder belongs to the run asked for.

use crate::model::Model;
use layerstream_planner::TensorClass;
use layerstream_planner::progress::sha256_hex;

/// Bytes read from each tensor for its content digest: blocks of [`SAMPLE_BYTES`] at
/// [`SAMPLES`] evenly spaced places, the first and the last included.
pub const SAMPLES: usize = 8;
/// Bytes of one sampled block.
pub const SAMPLE_BYTES: usize = 256;

/// What identifies a model: config.json, every tensor header and sampled bytes of every
/// tensor's values.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFingerprint {
    /// sha256 of config.json, the headers (name, dtype, shape, length) in name order and the
    /// weight digests.
    pub digest: String,
    /// Per part of the model (`embedding`, `layer 3`, `output`, `other`): sha256 of the
    /// sampled bytes of its tensors in name order, so a resume can say which weights changed.
    pub weights: std::collections::BTreeMap<String, String>,
}

/// The model's fingerprint. Retrained or re-downloaded weights of the same shapes change
/// every sampled block; reading 8 x 256 bytes of each tensor from the page cache takes
/// milliseconds even for tens of thousands of tensors.
pub fn model_fingerprint(model: &Model) -> ModelFingerprint {
    let mut text = std::fs::read(&model.config.path).unwrap_or_default();
    let store = &model.weights;
    let mut tensors: Vec<_> = store.inventory().tensors.iter().collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut sampled: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for t in tensors {
        text.extend_from_slice(
            format!(
                "\n{} {} {:?} {}",
                t.name,
                t.dtype.name(),
                t.shape,
                t.byte_len
            )
            .as_bytes(),
        );
        let part = match t.class {
            TensorClass::Input => "embedding".to_string(),
            TensorClass::Layer(l) => format!("layer {l}"),
            TensorClass::Output => "output".to_string(),
            TensorClass::Unclassified => "other".to_string(),
        };
        let bytes = store.bytes(t);
        let samples = sampled.entry(part).or_default();
        for k in 0..SAMPLES {
            let last_start = bytes.len().saturating_sub(SAMPLE_BYTES);
            let start = last_start * k / (SAMPLES - 1);
            samples.extend_from_slice(&bytes[start..(start + SAMPLE_BYTES).min(bytes.len())]);
        }
    }
    let weights: std::collections::BTreeMap<String, String> = sampled
        .into_iter()
        .map(|(part, bytes)| (part, sha256_hex(&bytes)))
        .collect();
    for (part, digest) in &weights {
        text.extend_from_slice(format!("\n{part} {digest}").as_bytes());
    }
    ModelFingerprint {
        digest: sha256_hex(&text),
        weights,
    }
}

/// sha256 of records' token ids and their lengths (sequences of their own lengths).
pub fn records_fingerprint(token_ids: &[u32], sequences: &crate::sequences::Sequences) -> String {
    let lengths: Vec<String> = sequences.lengths().map(|l| l.to_string()).collect();
    let mut bytes = format!("records {}\n", lengths.join(",")).into_bytes();
    for id in token_ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    sha256_hex(&bytes)
}

/// sha256 of the packed token ids and their shape.
pub fn data_fingerprint(token_ids: &[u32], num_sequences: usize, seq_len: usize) -> String {
    let mut bytes = format!("{num_sequences}x{seq_len}\n").into_bytes();
    for id in token_ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    sha256_hex(&bytes)
}
