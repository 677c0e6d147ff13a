//! Edits of a model folder's weights for planted tests: every tensor of a single-file
//! checkpoint as f32 values, written back in its own dtype (f32, or bf16 rounded to
//! nearest even).

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Calls `edit(name, shape, values)` for every tensor of `dir/model.safetensors` and
/// writes the file back.
pub fn edit_tensors(dir: &Path, mut edit: impl FnMut(&str, &[usize], &mut [f32])) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        let (dtype, shape) = (view.dtype(), view.shape().to_vec());
        let mut values: Vec<f32> = match dtype {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => panic!("{name}: edit_tensors reads f32 and bf16, not {other:?}"),
        };
        edit(&name, &shape, &mut values);
        let data: Vec<u8> = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        };
        tensors.push((name, dtype, shape, data));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = TensorView::new(*dtype, shape.clone(), data).unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}
