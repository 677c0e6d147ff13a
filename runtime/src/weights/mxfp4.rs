//! MXFP4 weights dequantized to f32 on the host (the CPU backend), exactly as transformers'
//! `integrations/mxfp4.py` (`convert_moe_packed_tensors`) does: blocks `[.., rows, cols / 32,
//! 16]` U8, each byte two E2M1 codes (low nibble the even column, high nibble the odd one);
//! scales `[.., rows, cols / 32]` U8, E8M0 (the value `LUT[code] * 2^(scale - 127)`). Rows are
//! output-major like an `nn.Linear` weight. Every value is exact in f32 (and in bf16).

use super::store::WeightStore;
use crate::error::{Result, RuntimeError};
use layerstream_planner::format::{MXFP4_BLOCK, TensorRef};

/// E2M1 codes: bit 3 the sign, then 2 exponent bits and 1 mantissa bit.
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Bytes of one block of 32 values.
const BLOCK_BYTES: usize = MXFP4_BLOCK / 2;

/// `value * 2^exponent` without an intermediate overflow (`torch.ldexp`): zero stays zero
/// at every scale (a single `powi(128)` would make it `0 * inf = NaN`).
fn ldexp(value: f32, exponent: i32) -> f32 {
    if value == 0.0 {
        return value;
    }
    let half = exponent / 2;
    value * 2f32.powi(half) * 2f32.powi(exponent - half)
}

/// Dequantizes `blocks (n, 16)` with `scales (n)` into `out (n, 32)`.
pub fn dequantize(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    debug_assert_eq!(blocks.len(), BLOCK_BYTES * scales.len());
    debug_assert_eq!(out.len(), MXFP4_BLOCK * scales.len());
    for ((block, &scale), values) in blocks
        .chunks_exact(BLOCK_BYTES)
        .zip(scales)
        .zip(out.chunks_exact_mut(MXFP4_BLOCK))
    {
        let exponent = scale as i32 - 127;
        for (pair, &byte) in values.chunks_exact_mut(2).zip(block) {
            pair[0] = ldexp(FP4_VALUES[(byte & 0x0f) as usize], exponent);
            pair[1] = ldexp(FP4_VALUES[(byte >> 4) as usize], exponent);
        }
    }
}

/// Checks that the tensors of `source` are U8 (reads no data).
fn check_u8(store: &WeightStore, source: &TensorRef, what: &str) -> Result<()> {
    for (entry, _) in store.ranges(source)? {
        if entry.dtype.name() != "U8" {
            return Err(RuntimeError::UnsupportedDtype {
                name: entry.name.clone(),
                path: store.file_of(entry).to_path_buf(),
                dtype: format!("{} (MXFP4 {what} are U8)", entry.dtype.name()),
            });
        }
    }
    Ok(())
}

/// The bytes of `source` (a whole tensor or an expert's slice), checked to be U8.
fn u8_bytes(store: &WeightStore, source: &TensorRef, what: &str) -> Result<Vec<u8>> {
    check_u8(store, source, what)?;
    let mut bytes = Vec::new();
    for (entry, range) in store.ranges(source)? {
        let start = range.offset as usize;
        bytes.extend_from_slice(&store.bytes(entry)[start..start + range.len as usize]);
    }
    Ok(bytes)
}

/// Checks an MXFP4 matrix `expected = [rows, cols]` (an expert's slice or a whole tensor):
/// its blocks `[.., rows, cols / 32, 16]` and scales `[.., rows, cols / 32]`, both U8.
pub fn check(
    store: &WeightStore,
    (blocks, scales): (&TensorRef, &TensorRef),
    expected: &[usize],
    reason: &str,
) -> Result<()> {
    let (rows, cols) = (expected[0], expected[1]);
    if !cols.is_multiple_of(MXFP4_BLOCK) {
        return Err(RuntimeError::InvalidRequest(format!(
            "{}: MXFP4 rows of {cols} values are not whole blocks of {MXFP4_BLOCK} ({reason})",
            blocks.name()
        )));
    }
    let groups = cols / MXFP4_BLOCK;
    for (part, trailing, what) in [
        (blocks, vec![rows, groups, BLOCK_BYTES], "blocks"),
        (scales, vec![rows, groups], "scales"),
    ] {
        let mut shape = match part {
            TensorRef::Stacked { count, .. } => vec![*count],
            _ => Vec::new(),
        };
        shape.extend(trailing);
        let entry = store.entry(part.name(), "an MXFP4 weight needs its blocks and scales")?;
        if entry.shape != shape {
            return Err(RuntimeError::ShapeMismatch {
                name: part.name().to_string(),
                path: store.file_of(entry).to_path_buf(),
                expected: shape,
                found: entry.shape.clone(),
                reason: format!("MXFP4 {what} of {reason}"),
            });
        }
        check_u8(store, part, what)?;
    }
    Ok(())
}

/// An MXFP4 matrix `(rows, cols)` as f32, from its blocks and scales.
pub fn read_f32(store: &WeightStore, blocks: &TensorRef, scales: &TensorRef) -> Result<Vec<f32>> {
    let (block_bytes, scale_bytes) = (
        u8_bytes(store, blocks, "blocks")?,
        u8_bytes(store, scales, "scales")?,
    );
    if block_bytes.len() != BLOCK_BYTES * scale_bytes.len() {
        return Err(RuntimeError::InvalidRequest(format!(
            "{} and {}: {} bytes of MXFP4 blocks for {} scales; each scale covers one block of 16 bytes (blocks [.., rows, cols / 32, 16], scales [.., rows, cols / 32])",
            blocks.name(),
            scales.name(),
            block_bytes.len(),
            scale_bytes.len()
        )));
    }
    let mut out = vec![0f32; MXFP4_BLOCK * scale_bytes.len()];
    dequantize(&block_bytes, &scale_bytes, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerstream_planner::format::WeightFormat;
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;

    #[test]
    fn codes_nibbles_and_scales_as_transformers_reads_them() {
        // Byte j holds code j (low, even column) and 15 - j (high, odd column).
        let block: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let mut out = vec![f32::NAN; 32];
        dequantize(&block, &[127], &mut out);
        for j in 0..16 {
            assert_eq!(out[2 * j], FP4_VALUES[j], "even column {}", 2 * j);
            assert_eq!(
                out[2 * j + 1],
                FP4_VALUES[15 - j],
                "odd column {}",
                2 * j + 1
            );
        }
        assert!(out[16].is_sign_negative() && out[16] == 0.0, "code 8 is -0");
        // Scale 129: x4; scale 125: / 4.
        let mut scaled = vec![0f32; 64];
        dequantize(&[block.clone(), block].concat(), &[129, 125], &mut scaled);
        assert_eq!(scaled[2 * 7], 6.0 * 4.0);
        assert_eq!(scaled[32 + 2 * 7], 6.0 / 4.0);
    }

    #[test]
    fn extreme_scales_keep_zeros_and_powers_of_two_exact() {
        let block = [0x70u8; 16]; // low code 0 (+0), high code 7 (6.0)
        let mut out = vec![f32::NAN; 32];
        dequantize(&block, &[255], &mut out);
        assert_eq!(out[0], 0.0, "0 x 2^128 is 0, not NaN");
        assert_eq!(
            out[1],
            f32::INFINITY,
            "6 x 2^128 overflows as in torch.ldexp"
        );
        dequantize(&block, &[0], &mut out);
        assert_eq!(
            out[1],
            6.0 * 2f32.powi(-127),
            "2^-127 x 6 is exact (subnormal range)"
        );
        assert!(out[1] > 0.0);
    }

    /// MXFP4 experts stacked as the hub stores them: blocks `[2, 3, 2, 16]`, scales
    /// `[2, 3, 2]`; expert 1's rows 1..3 read through stacked slices and dequantized, against
    /// the format written out by hand; blocks of the wrong dtype are refused.
    #[test]
    fn an_mxfp4_expert_slice_is_dequantized() {
        let dir = tempfile::tempdir().unwrap();
        let blocks: Vec<u8> = (0..2 * 3 * 2 * 16).map(|i| (i * 37 % 256) as u8).collect();
        let scales: Vec<u8> = (0..2 * 3 * 2).map(|i| 120 + (i % 9) as u8).collect();
        let f32_blocks: Vec<u8> = (0..2 * 3 * 2 * 16)
            .flat_map(|_| 1f32.to_le_bytes())
            .collect();
        let tensors = [
            (
                "b",
                TensorView::new(Dtype::U8, vec![2, 3, 2, 16], &blocks).unwrap(),
            ),
            (
                "s",
                TensorView::new(Dtype::U8, vec![2, 3, 2], &scales).unwrap(),
            ),
            (
                "f",
                TensorView::new(Dtype::F32, vec![2, 3, 2, 16], &f32_blocks).unwrap(),
            ),
        ];
        let bytes = safetensors::serialize(tensors, None).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
        let store = WeightStore::open(dir.path()).unwrap();
        let slice = |name: &str| TensorRef::Stacked {
            name: name.into(),
            index: 1,
            count: 2,
            rows: 1..3,
            total_rows: 3,
        };
        let matrix = |values: &str| TensorRef::Quantized {
            format: WeightFormat::Mxfp4,
            values: Box::new(slice(values)),
            scales: Box::new(slice("s")),
        };
        let got = store.read_ref_f32(&matrix("b")).unwrap();
        assert_eq!(got.len(), 2 * 64);
        for r in 0..2 {
            for c in 0..64 {
                let (row, group, byte) = (3 + 1 + r, c / 32, c % 32 / 2);
                let code = blocks[(row * 2 + group) * 16 + byte] >> (4 * (c % 2)) & 0x0f;
                let exponent = scales[row * 2 + group] as i32 - 127;
                let expect = FP4_VALUES[code as usize] * 2f32.powi(exponent);
                assert_eq!(got[r * 64 + c], expect, "row {r} column {c}");
            }
        }
        let wrong = store.read_ref_f32(&matrix("f")).unwrap_err().to_string();
        assert!(
            wrong.contains("f") && wrong.contains("MXFP4 blocks are U8"),
            "{wrong}"
        );
    }
}
