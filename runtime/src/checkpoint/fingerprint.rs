//! Fingerprints that decide whether an output folder belongs to the run asked for.

use crate::model::Model;
use layerstream_planner::progress::sha256_hex;

/// sha256 of config.json's bytes and every tensor header (name, dtype, shape, length),
/// in name order: the weights' bytes are not read (a 100 GB model is fingerprinted in ms).
pub fn model_fingerprint(model: &Model) -> String {
    let mut text = std::fs::read(&model.config.path).unwrap_or_default();
    let mut tensors: Vec<_> = model.weights.inventory().tensors.iter().collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
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
    }
    sha256_hex(&text)
}

/// sha256 of the packed token ids and their shape.
pub fn data_fingerprint(token_ids: &[u32], num_sequences: usize, seq_len: usize) -> String {
    let mut bytes = format!("{num_sequences}x{seq_len}\n").into_bytes();
    for id in token_ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    sha256_hex(&bytes)
}
