//! FP8 block-quantized weights dequantized to f32 on the host (the CPU backend), as
//! transformers' `Fp8Dequantize` (`integrations/finegrained_fp8.py`) does: `weight
//! (rows, cols)` F8_E4M3 times `weight_scale_inv (ceil(rows / br), ceil(cols / bc))` F32,
//! element `(r, c)` by the scale of block `(r / br, c / bc)` (the last blocks of a row or
//! column cut short, as DeepSeek-V3's format; transformers needs whole blocks). Each value is
//! one f32 product of an exact E4M3 value and the scale, so it is the f32 transformers
//! computes; the GPU rounds that product to bf16 once when it computes in bf16.

use super::store::WeightStore;
use crate::arch::quantization::FP8_DTYPE;
use crate::error::{Result, RuntimeError};
use layerstream_planner::format::TensorRef;

/// The value of an E4M3 byte (`float8_e4m3fn`: bias 7, subnormals, no infinities, NaN for
/// S.1111.111), exact in f32.
pub fn e4m3_to_f32(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = ((byte >> 3) & 0x0f) as i32;
    let mantissa = (byte & 0x07) as f32;
    if exponent == 0x0f && byte & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exponent == 0 {
        return sign * mantissa / 8.0 * 2f32.powi(-6);
    }
    sign * (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7)
}

/// Dequantizes `values (rows, cols)` E4M3 bytes with `scales (ceil(rows / br), ceil(cols /
/// bc))` into `out (rows, cols)`.
pub fn dequantize(
    values: &[u8],
    scales: &[f32],
    cols: usize,
    (block_rows, block_cols): (usize, usize),
    out: &mut [f32],
) {
    let scale_cols = cols.div_ceil(block_cols);
    for (r, (row, out_row)) in values
        .chunks_exact(cols)
        .zip(out.chunks_exact_mut(cols))
        .enumerate()
    {
        let scale_row = &scales[r / block_rows * scale_cols..][..scale_cols];
        for (c, (&byte, o)) in row.iter().zip(out_row).enumerate() {
            *o = e4m3_to_f32(byte) * scale_row[c / block_cols];
        }
    }
}

/// The shape of the scales of a `rows x cols` matrix in blocks of `br x bc`.
pub fn scale_shape(
    rows: usize,
    cols: usize,
    (block_rows, block_cols): (usize, usize),
) -> [usize; 2] {
    [rows.div_ceil(block_rows), cols.div_ceil(block_cols)]
}

/// Checks an FP8 matrix `expected = [rows, cols]`: its values F8_E4M3 of that shape and its
/// `weight_scale_inv` F32 of one scale per block.
pub fn check(
    store: &WeightStore,
    (values, scales): (&TensorRef, &TensorRef),
    blocks: (usize, usize),
    expected: &[usize],
    reason: &str,
) -> Result<()> {
    let entry = store.entry(values.name(), reason)?;
    if entry.shape != expected {
        return Err(RuntimeError::ShapeMismatch {
            name: values.name().to_string(),
            path: store.file_of(entry).to_path_buf(),
            expected: expected.to_vec(),
            found: entry.shape.clone(),
            reason: reason.to_string(),
        });
    }
    let scale = store.entry(
        scales.name(),
        &format!(
            "{} is stored as {FP8_DTYPE}, and an FP8 weight needs its inverse scales; the checkpoint is incomplete",
            values.name()
        ),
    )?;
    let shape = scale_shape(expected[0], expected[1], blocks).to_vec();
    if scale.shape != shape {
        return Err(RuntimeError::ShapeMismatch {
            name: scales.name().to_string(),
            path: store.file_of(scale).to_path_buf(),
            expected: shape,
            found: scale.shape.clone(),
            reason: format!(
                "one scale per {} x {} block (quantization_config.weight_block_size) of {} {:?}",
                blocks.0,
                blocks.1,
                values.name(),
                expected
            ),
        });
    }
    if scale.dtype.name() != "F32" {
        return Err(RuntimeError::UnsupportedFeature {
            path: store.file_of(scale).to_path_buf(),
            what: format!("{} stored as {}", scales.name(), scale.dtype.name()),
            hint: "FP8 inverse scales here are F32, as the released FP8 checkpoints store them"
                .into(),
        });
    }
    Ok(())
}

/// An FP8 matrix `(rows, cols)` as f32, from its values and scales (checked when the model
/// opened).
pub fn read_f32(
    store: &WeightStore,
    (values, scales): (&TensorRef, &TensorRef),
    blocks: (usize, usize),
) -> Result<Vec<f32>> {
    let entry = store.entry(values.name(), "needed by the forward pass")?;
    let (rows, cols) = (entry.shape[0], entry.shape[1]);
    let scale_values = store.read_f32(scales.name())?;
    let mut out = vec![0f32; rows * cols];
    dequantize(store.bytes(entry), &scale_values, cols, blocks, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_e4m3_code_decodes_as_the_format_defines() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x80).to_bits(), (-0.0f32).to_bits());
        assert_eq!(e4m3_to_f32(0x38), 1.0); // exponent 7, mantissa 0
        assert_eq!(e4m3_to_f32(0x7e), 448.0); // the largest finite
        assert_eq!(e4m3_to_f32(0xfe), -448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // the smallest subnormal
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6)); // the smallest normal
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
        // Monotonic over the positive codes: each is a distinct, larger value.
        for code in 1..0x7eu8 {
            assert!(e4m3_to_f32(code) < e4m3_to_f32(code + 1), "{code:#x}");
        }
    }

    #[test]
    fn each_block_takes_its_own_scale_and_edge_blocks_are_cut_short() {
        // 3 x 5 in blocks of 2 x 2: scales (2, 3), the last block row and column cut short.
        let (rows, cols) = (3, 5);
        let values = vec![0x38u8; rows * cols]; // all 1.0
        let scales: Vec<f32> = (1..=6).map(|s| s as f32).collect();
        assert_eq!(scale_shape(rows, cols, (2, 2)), [2, 3]);
        let mut out = vec![0f32; rows * cols];
        dequantize(&values, &scales, cols, (2, 2), &mut out);
        assert_eq!(
            out,
            vec![
                1.0, 1.0, 2.0, 2.0, 3.0, //
                1.0, 1.0, 2.0, 2.0, 3.0, //
                4.0, 4.0, 5.0, 5.0, 6.0,
            ]
        );
    }
}
