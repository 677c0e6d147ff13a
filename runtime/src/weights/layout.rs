//! A layer tensor's stored values turned into the matrix or vector its role needs
//! ([`Layout`]): GPT-OSS's fused, in-major and interleaved expert tensors become the
//! out-major gate, up and down matrices every expert op takes.

use super::store::WeightStore;
use crate::arch::{LayerTensor, Layout};
use crate::error::Result;

/// `values` (stored as `shape`) under `layout`.
pub fn apply(layout: Layout, shape: &[usize], values: Vec<f32>) -> Vec<f32> {
    match layout {
        Layout::AsStored => values,
        Layout::InMajorColumns { stride, offset } => {
            // (in, columns) -> every stride-th column from offset, as rows: (out, in).
            let (inputs, columns) = (shape[0], shape[1]);
            let outputs = columns / stride;
            let mut out = vec![0f32; outputs * inputs];
            for (i, row) in values.chunks_exact(columns).enumerate() {
                for j in 0..outputs {
                    out[j * inputs + i] = row[offset + stride * j];
                }
            }
            out
        }
        Layout::Rows { stride, offset } => {
            let rows = shape[0];
            let width = values.len() / rows.max(1);
            values
                .chunks_exact(width)
                .skip(offset)
                .step_by(stride)
                .flatten()
                .copied()
                .collect()
        }
    }
}

/// A layer tensor read as f32 and laid out for its role (a zero-centred norm weight as
/// `1 + w`, added in f32 as transformers does).
pub fn read_f32(store: &WeightStore, tensor: &LayerTensor) -> Result<Vec<f32>> {
    let values = store.read_ref_f32(&tensor.source)?;
    let mut values = apply(tensor.layout, &tensor.shape, values);
    if tensor.unit_offset {
        values.iter_mut().for_each(|w| *w += 1.0);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_in_major_columns_become_out_major_rows() {
        // (in 2, columns 4): gate = columns 0, 2; up = columns 1, 3.
        let stored = vec![0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0];
        let gate = apply(
            Layout::InMajorColumns {
                stride: 2,
                offset: 0,
            },
            &[2, 4],
            stored.clone(),
        );
        assert_eq!(gate, vec![0.0, 10.0, 2.0, 12.0]);
        let up = apply(
            Layout::InMajorColumns {
                stride: 2,
                offset: 1,
            },
            &[2, 4],
            stored.clone(),
        );
        assert_eq!(up, vec![1.0, 11.0, 3.0, 13.0]);
        let down = apply(
            Layout::InMajorColumns {
                stride: 1,
                offset: 0,
            },
            &[2, 4],
            stored,
        );
        assert_eq!(down, vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0, 3.0, 13.0]);
    }

    #[test]
    fn every_other_row_of_a_matrix_or_a_vector() {
        let matrix = vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]; // (4, 2)
        let odd = apply(
            Layout::Rows {
                stride: 2,
                offset: 1,
            },
            &[4, 2],
            matrix,
        );
        assert_eq!(odd, vec![1.0, 1.5, 3.0, 3.5]);
        let vector = apply(
            Layout::Rows {
                stride: 2,
                offset: 0,
            },
            &[4],
            vec![5.0, 6.0, 7.0, 8.0],
        );
        assert_eq!(vector, vec![5.0, 7.0]);
    }
}
