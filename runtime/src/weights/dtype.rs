//! Conversion of stored weight bytes to f32, the arithmetic type of the CPU reference.

use half::{bf16, f16};
use layerstream_planner::TensorDtype;

/// Converts little-endian `bytes` of `dtype` into `out` (one f32 per element).
///
/// Reads element by element from bytes, so the source needs no alignment (safetensors
/// offsets are not guaranteed to be aligned to the element size).
pub fn convert_to_f32(dtype: TensorDtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        TensorDtype::F32 => {
            for (dst, src) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            }
        }
        TensorDtype::Bf16 => {
            for (dst, src) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *dst = bf16::from_bits(u16::from_le_bytes([src[0], src[1]])).to_f32();
            }
        }
        TensorDtype::F16 => {
            for (dst, src) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *dst = f16::from_bits(u16::from_le_bytes([src[0], src[1]])).to_f32();
            }
        }
        TensorDtype::I64 | TensorDtype::Other(_) => {
            unreachable!("weight dtypes are checked when the inventory is built")
        }
    }
}

/// Whether a dtype can be converted to f32 by [`convert_to_f32`].
pub fn is_float_weight(dtype: TensorDtype) -> bool {
    matches!(
        dtype,
        TensorDtype::F32 | TensorDtype::F16 | TensorDtype::Bf16
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_each_float_dtype_exactly() {
        let values = [1.5f32, -2.25, 0.0, 65504.0, 3.0e-5];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bf16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        let f16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        let mut out = [0f32; 5];
        convert_to_f32(TensorDtype::F32, &f32_bytes, &mut out);
        assert_eq!(out, values);
        convert_to_f32(TensorDtype::Bf16, &bf16_bytes, &mut out);
        for (o, v) in out.iter().zip(values) {
            assert_eq!(*o, bf16::from_f32(v).to_f32());
        }
        convert_to_f32(TensorDtype::F16, &f16_bytes, &mut out);
        for (o, v) in out.iter().zip(values) {
            assert_eq!(*o, f16::from_f32(v).to_f32());
        }
    }
}
