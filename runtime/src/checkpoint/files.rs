//! The files of an output folder: hidden-state checkpoints and per-layer results, as
//! safetensors (loadable from Python) and JSON, written atomically.

use crate::analysis::{LayerReport, PointStatistics};
use crate::capture::CapturePoint;
use crate::error::{Result, RuntimeError};
use layerstream_planner::progress::FileRecord;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Relative path of the hidden states after `layer`.
pub fn hidden_path(layer: usize) -> String {
    format!("hidden/after_layer_{layer}.safetensors")
}

/// Relative path of a layer's summary.
pub fn layer_json_path(layer: usize) -> String {
    format!("layers/layer_{layer}.json")
}

/// Relative path of a layer's per-(sequence, dimension) statistics.
pub fn layer_statistics_path(layer: usize) -> String {
    format!("layers/layer_{layer}.safetensors")
}

static WRITES: AtomicUsize = AtomicUsize::new(0);

/// Writes `bytes` to `folder/relative` atomically and returns its record.
///
/// Fault injection for tests: with `LAYERSTREAM_FAULT_WRITE=N`, the N-th checkpoint write of
/// the process fails as a full disk would.
pub fn write_file(folder: &Path, relative: &str, bytes: &[u8]) -> Result<FileRecord> {
    let path = folder.join(relative);
    let count = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
    let injected = std::env::var("LAYERSTREAM_FAULT_WRITE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n == count);
    let written = if injected {
        Err(std::io::Error::other(
            "No space left on device (injected by LAYERSTREAM_FAULT_WRITE)",
        ))
    } else {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| RuntimeError::io("cannot create", parent, e))?;
        }
        layerstream_planner::write_atomically(&path, bytes)
    };
    written.map_err(|e| RuntimeError::io("cannot write", &path, e))?;
    Ok(FileRecord::of(relative, bytes))
}

/// Serialises hidden states `(tokens, width)` after `layer`.
pub fn hidden_bytes(hidden: &[f32], width: usize, layer: usize) -> Result<Vec<u8>> {
    let bytes: Vec<u8> = hidden.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![hidden.len() / width, width], &bytes)
        .map_err(|e| RuntimeError::InvalidRequest(format!("hidden states: {e}")))?;
    let metadata = HashMap::from([("after_layer".to_string(), layer.to_string())]);
    safetensors::serialize([("hidden_states", view)], Some(metadata))
        .map_err(|e| RuntimeError::InvalidRequest(format!("hidden states: {e}")))
}

/// Reads hidden states written by [`hidden_bytes`], checking their shape.
pub fn read_hidden(folder: &Path, relative: &str, tokens: usize, width: usize) -> Result<Vec<f32>> {
    let path = folder.join(relative);
    let bytes = std::fs::read(&path).map_err(|e| RuntimeError::io("cannot read", &path, e))?;
    let damaged = |what: String| RuntimeError::Safetensors {
        path: path.clone(),
        message: what,
    };
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| damaged(format!("not a hidden-state checkpoint: {e}")))?;
    let view = file
        .tensor("hidden_states")
        .map_err(|e| damaged(format!("no hidden_states tensor: {e}")))?;
    if view.dtype() != Dtype::F32 || view.shape() != [tokens, width] {
        return Err(damaged(format!(
            "hidden_states is {:?} {:?}, expected F32 [{tokens}, {width}]",
            view.dtype(),
            view.shape()
        )));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Serialises a layer's statistics: per point `{point}.max_abs` F32 `(sequences, width)`,
/// `{point}.count_ge` and `{point}.non_finite` U64, `{point}.sums` F64 `(4, sequences, width)`.
pub fn statistics_bytes(statistics: &BTreeMap<CapturePoint, PointStatistics>) -> Result<Vec<u8>> {
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (point, s) in statistics {
        let shape = vec![s.sequences, s.width];
        let name = point.name();
        buffers.push((
            format!("{name}.max_abs"),
            Dtype::F32,
            shape.clone(),
            s.max_abs.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        buffers.push((
            format!("{name}.count_ge"),
            Dtype::U64,
            shape.clone(),
            s.count_ge.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        buffers.push((
            format!("{name}.non_finite"),
            Dtype::U64,
            shape.clone(),
            s.non_finite.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        buffers.push((
            format!("{name}.sums"),
            Dtype::F64,
            vec![4, s.sequences, s.width],
            s.sums.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| RuntimeError::InvalidRequest(format!("statistics {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let threshold = statistics.values().next().map_or(0.0, |s| s.threshold);
    let metadata = HashMap::from([("threshold".to_string(), threshold.to_string())]);
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| RuntimeError::InvalidRequest(format!("statistics: {e}")))
}

/// Reads a layer summary written as JSON.
pub fn read_layer_report(folder: &Path, relative: &str) -> Result<LayerReport> {
    let path = folder.join(relative);
    let text =
        std::fs::read_to_string(&path).map_err(|e| RuntimeError::io("cannot read", &path, e))?;
    serde_json::from_str(&text).map_err(|e| RuntimeError::Data {
        path,
        message: format!("not a layer summary: {e}"),
    })
}
