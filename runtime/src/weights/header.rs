//! A safetensors file's header read into inventory entries, and the errors that say what is
//! wrong with a header that does not parse (truncated files, bad tensors).

use crate::error::{Result, RuntimeError};
use layerstream_planner::inventory::{classify_expert, classify_tensor_name};
use layerstream_planner::{TensorDtype, TensorEntry};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Reads one file's header into inventory entries with absolute byte offsets.
pub(super) fn read_header(path: &Path, map: &[u8], file_index: usize) -> Result<Vec<TensorEntry>> {
    let (header_len, metadata) = match SafeTensors::read_metadata(map) {
        Ok(parsed) => parsed,
        Err(error) => return Err(describe_header_error(path, map, error)),
    };
    let data_start = 8 + header_len as u64;
    let mut entries = Vec::new();
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        entries.push(TensorEntry {
            class: classify_tensor_name(&name),
            expert: classify_expert(&name),
            name,
            shape: info.shape.clone(),
            dtype: tensor_dtype(info.dtype),
            file_index,
            byte_offset: data_start + start as u64,
            byte_len: (end - start) as u64,
        });
    }
    Ok(entries)
}

fn tensor_dtype(dtype: Dtype) -> TensorDtype {
    match dtype {
        Dtype::F32 => TensorDtype::F32,
        Dtype::F16 => TensorDtype::F16,
        Dtype::BF16 => TensorDtype::Bf16,
        Dtype::I64 => TensorDtype::I64,
        Dtype::F64 => TensorDtype::Other("F64"),
        Dtype::I32 => TensorDtype::Other("I32"),
        Dtype::U8 => TensorDtype::Other("U8"),
        Dtype::I8 => TensorDtype::Other("I8"),
        Dtype::F8_E4M3 => TensorDtype::Other("F8_E4M3"),
        Dtype::F8_E5M2 => TensorDtype::Other("F8_E5M2"),
        _ => TensorDtype::Other("an unsupported dtype"),
    }
}

/// Turns a safetensors parse error into a message that says what is wrong with the file.
fn describe_header_error(
    path: &Path,
    map: &[u8],
    error: safetensors::SafeTensorError,
) -> RuntimeError {
    let message = match error {
        safetensors::SafeTensorError::MetadataIncompleteBuffer => match expected_file_len(map) {
            Some(expected) if expected > map.len() as u64 => format!(
                "truncated: the header describes {expected} bytes but the file has {}; the download or copy did not finish, fetch the file again",
                map.len()
            ),
            Some(expected) => format!(
                "the header describes {expected} bytes but the file has {}; the file is damaged, fetch it again",
                map.len()
            ),
            None => "header and data disagree; the file is damaged, fetch it again".into(),
        },
        safetensors::SafeTensorError::HeaderTooSmall
        | safetensors::SafeTensorError::InvalidHeaderLength => format!(
            "truncated or not a safetensors file ({} bytes; the header does not fit)",
            map.len()
        ),
        other => match find_bad_tensor(map) {
            Some(tensor) => format!("not a valid safetensors file: {tensor} ({other})"),
            None => format!("not a valid safetensors file: {other}"),
        },
    };
    RuntimeError::Safetensors {
        path: path.to_path_buf(),
        message,
    }
}

/// The first tensor whose header entry is malformed, described (the safetensors parser's
/// errors do not name it).
fn find_bad_tensor(map: &[u8]) -> Option<String> {
    let header_len = u64::from_le_bytes(map.get(..8)?.try_into().ok()?);
    let header = map.get(8..8usize.checked_add(usize::try_from(header_len).ok()?)?)?;
    let header: serde_json::Value = serde_json::from_slice(header).ok()?;
    let mut entries: Vec<(&String, &serde_json::Value)> = header
        .as_object()?
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .collect();
    entries.sort_by_key(|(_, t)| t["data_offsets"][0].as_u64().unwrap_or(0));
    let mut end_of_previous = 0u64;
    for (name, tensor) in entries {
        let dtype = tensor["dtype"].as_str().unwrap_or("?");
        let size: Option<u64> = match dtype {
            "F64" | "I64" | "U64" => Some(8),
            "F32" | "I32" | "U32" => Some(4),
            "F16" | "BF16" | "I16" | "U16" => Some(2),
            "F8_E4M3" | "F8_E5M2" | "F8_E8M0" | "I8" | "U8" | "BOOL" => Some(1),
            _ => None,
        };
        let Some(size) = size else {
            return Some(format!("tensor {name} has dtype {:?}", tensor["dtype"]));
        };
        let shape: Option<Vec<u64>> = tensor["shape"]
            .as_array()
            .and_then(|dims| dims.iter().map(|d| d.as_u64()).collect());
        let offsets: Option<Vec<u64>> = tensor["data_offsets"]
            .as_array()
            .and_then(|o| o.iter().map(|d| d.as_u64()).collect());
        let (Some(shape), Some(offsets)) = (shape, offsets) else {
            return Some(format!(
                "tensor {name} has a malformed shape or data_offsets"
            ));
        };
        let needed = shape
            .iter()
            .try_fold(size, |n, &d| n.checked_mul(d))
            .map_or("more than 2^64".to_string(), |n| n.to_string());
        match offsets.as_slice() {
            [start, end] if start <= end && (end - start).to_string() == needed => {
                if *start != end_of_previous {
                    return Some(format!(
                        "tensor {name}'s data starts at {start}, not where the previous one ends ({end_of_previous})"
                    ));
                }
                end_of_previous = *end;
            }
            _ => {
                return Some(format!(
                    "tensor {name}: shape {shape:?} of {dtype} needs {needed} bytes but its data_offsets are {offsets:?}"
                ));
            }
        }
    }
    None
}

/// File length the header implies: 8 + header + the end of the last tensor's data.
fn expected_file_len(map: &[u8]) -> Option<u64> {
    let header_len = u64::from_le_bytes(map.get(..8)?.try_into().ok()?);
    let header = map.get(8..8 + header_len as usize)?;
    let header: serde_json::Value = serde_json::from_slice(header).ok()?;
    let data_end = header
        .as_object()?
        .values()
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    Some(8 + header_len + data_end)
}
