//! A layer's per-(sequence, dimension) statistics as safetensors (`layers/layer_{l}.safetensors`),
//! written when the layer finishes and read back when the report is assembled. Per point
//! `{point}.max_abs` F32 `(sequences, width)`; `{point}.count_ge`, `.count_pos_ge`,
//! `.non_finite` U64 `(sequences, width)`; `{point}.sum_abs_ge` F64 `(sequences, width)`;
//! `{point}.sums` F64 `(4, sequences, width)`; `{point}.histogram` U64 `(bins)`; for points
//! that keep positions, only the dimensions with any: `{point}.position_dims` U32 `(n)` and
//! `{point}.positions` U32 `(n, words)`. Metadata: threshold, seq_len.

use crate::analysis::PointStatistics;
use crate::analysis::position_bits::PositionBits;
use crate::capture::CapturePoint;
use crate::error::{Result, RuntimeError};
use crate::sequences::Sequences;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn le_bytes<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

/// Serialises a layer's statistics (see the module docs).
pub fn statistics_bytes(statistics: &BTreeMap<CapturePoint, PointStatistics>) -> Result<Vec<u8>> {
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (point, s) in statistics {
        let shape = vec![s.sequences, s.width];
        let mut add = |field: &str, dtype, shape: Vec<usize>, bytes| {
            buffers.push((format!("{point}.{field}"), dtype, shape, bytes))
        };
        add(
            "max_abs",
            Dtype::F32,
            shape.clone(),
            le_bytes(&s.max_abs, f32::to_le_bytes),
        );
        add(
            "count_ge",
            Dtype::U64,
            shape.clone(),
            le_bytes(&s.count_ge, u64::to_le_bytes),
        );
        let positive = le_bytes(&s.count_pos_ge, u64::to_le_bytes);
        add("count_pos_ge", Dtype::U64, shape.clone(), positive);
        add(
            "sum_abs_ge",
            Dtype::F64,
            shape.clone(),
            le_bytes(&s.sum_abs_ge, f64::to_le_bytes),
        );
        add(
            "non_finite",
            Dtype::U64,
            shape.clone(),
            le_bytes(&s.non_finite, u64::to_le_bytes),
        );
        let sums_shape = vec![4, s.sequences, s.width];
        add(
            "sums",
            Dtype::F64,
            sums_shape,
            le_bytes(&s.sums, f64::to_le_bytes),
        );
        let bins = vec![s.histogram.len()];
        add(
            "histogram",
            Dtype::U64,
            bins,
            le_bytes(&s.histogram, u64::to_le_bytes),
        );
        let words = s.position_words();
        if words > 0 {
            // Every held row has a bit (rows of zeros are never held).
            let dims: Vec<u32> = s.positions.held_rows().map(|(d, _)| d as u32).collect();
            let bits: Vec<u32> = s
                .positions
                .held_rows()
                .flat_map(|(_, row)| row.iter().copied())
                .collect();
            let n = dims.len();
            add(
                "position_dims",
                Dtype::U32,
                vec![n],
                le_bytes(&dims, u32::to_le_bytes),
            );
            add(
                "positions",
                Dtype::U32,
                vec![n, words],
                le_bytes(&bits, u32::to_le_bytes),
            );
        }
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| RuntimeError::internal(format!("statistics {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let first = statistics.values().next();
    let mut metadata = HashMap::from([(
        "threshold".to_string(),
        first.map_or(0.0, |s| s.threshold).to_string(),
    )]);
    // Sequences of one length keep the one number; records of their own lengths list them.
    match first.map(|s| (s.uniform_len(), &s.rows)) {
        Some((None, rows)) => {
            let lengths: Vec<String> = rows.lengths().map(|l| l.to_string()).collect();
            metadata.insert("sequence_lengths".to_string(), lengths.join(","));
        }
        other => {
            let len = other.and_then(|(len, _)| len).unwrap_or(0);
            metadata.insert("seq_len".to_string(), len.to_string());
        }
    }
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| RuntimeError::internal(format!("statistics: {e}")))?;
    with_sorted_header(bytes)
}

/// The same safetensors bytes with the header's keys (tensors and `__metadata__`) in sorted
/// order: safetensors writes its metadata map in hash order, so identical runs wrote
/// different files. The sorted compact JSON has the same length (the same keys and values).
fn with_sorted_header(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bug = |what: &str| RuntimeError::internal(format!("statistics header: {what}"));
    let len = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| bug("too short"))?) as usize;
    let header = &bytes[8..8 + len];
    let value: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| bug(&e.to_string()))?;
    // serde_json's maps are ordered by key.
    let mut sorted = serde_json::to_vec(&value).map_err(|e| bug(&e.to_string()))?;
    if sorted.len() > len {
        return Err(bug("the sorted header is longer"));
    }
    sorted.resize(len, b' ');
    bytes[8..8 + len].copy_from_slice(&sorted);
    Ok(bytes)
}

/// Reads a layer's statistics file back (massive activations are in the layer's JSON).
pub fn read_statistics(path: &Path) -> Result<BTreeMap<CapturePoint, PointStatistics>> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io("cannot read", path, e))?;
    let bad = |message: String| RuntimeError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let number = |key: &str| -> Result<f64> {
        metadata
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("metadata has no {key}; run with --restart")))
    };
    let threshold = number("threshold")? as f32;
    let lengths: Option<Vec<usize>> = match metadata.get("sequence_lengths") {
        Some(list) => Some(
            list.split(',')
                .map(|l| {
                    l.parse()
                        .map_err(|_| bad(format!("sequence_lengths: {l:?}")))
                })
                .collect::<Result<_>>()?,
        ),
        None => None,
    };
    let seq_len = match lengths {
        Some(_) => 0,
        None => number("seq_len")? as usize,
    };
    let mut statistics = BTreeMap::new();
    for point in CapturePoint::ACTIVATIONS {
        let Ok(max_abs) = tensors.tensor(&format!("{point}.max_abs")) else {
            continue;
        };
        let (sequences, width) = (max_abs.shape()[0], max_abs.shape()[1]);
        let field = |name: &str| {
            tensors
                .tensor(&format!("{point}.{name}"))
                .map(|t| t.data())
                .map_err(|e| bad(format!("{point}.{name}: {e}")))
        };
        let u64s = |b: &[u8]| -> Vec<u64> {
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        let f64s = |b: &[u8]| -> Vec<f64> {
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        let u32s = |b: &[u8]| -> Vec<u32> {
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        let shape = point.statistics_shape(width);
        let rows = match &lengths {
            Some(lengths) if lengths.len() == sequences => {
                Sequences::from_lengths(lengths.iter().copied())
            }
            Some(lengths) => {
                return Err(bad(format!(
                    "{} sequence lengths for {sequences} sequences; run with --restart",
                    lengths.len()
                )));
            }
            None => Sequences::uniform(sequences, seq_len),
        };
        // Built from the file's fields directly (not zeroed first and then replaced).
        let mut s = PointStatistics {
            sequences,
            rows,
            width: shape.width,
            threshold,
            max_abs: u32s(max_abs.data())
                .into_iter()
                .map(f32::from_bits)
                .collect(),
            count_ge: u64s(field("count_ge")?),
            count_pos_ge: u64s(field("count_pos_ge")?),
            sum_abs_ge: f64s(field("sum_abs_ge")?),
            non_finite: u64s(field("non_finite")?),
            sums: f64s(field("sums")?),
            histogram: u64s(field("histogram")?),
            positions: PositionBits::default(),
            massive: None,
        };
        let words = match shape.positions {
            true => PointStatistics::words_for(s.tokens()),
            false => 0,
        };
        s.positions = PositionBits::new(shape.width, words);
        if words > 0 {
            let dims = u32s(field("position_dims")?);
            let bits = u32s(field("positions")?);
            if bits.len() != dims.len() * words || dims.iter().any(|&d| d as usize >= shape.width) {
                return Err(bad(format!(
                    "{point}.positions: {} words for {} dimensions of {words} words (width {})",
                    bits.len(),
                    dims.len(),
                    shape.width
                )));
            }
            for (d, row) in dims.iter().zip(bits.chunks_exact(words)) {
                s.positions.set_row(*d as usize, row);
            }
        }
        statistics.insert(point, s);
    }
    Ok(statistics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_survive_a_round_trip() {
        let mut statistics = BTreeMap::new();
        for point in [CapturePoint::Ln1, CapturePoint::MlpOut] {
            let mut s = PointStatistics::new(3, 5, point.statistics_shape(4), 2.0);
            let values: Vec<f32> = (0..60)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7)
                .collect();
            s.accumulate(&values, 0);
            statistics.insert(point, s);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.safetensors");
        std::fs::write(&path, statistics_bytes(&statistics).unwrap()).unwrap();
        assert_eq!(read_statistics(&path).unwrap(), statistics);
    }
}
