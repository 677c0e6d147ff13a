//! The f16 path's kernels (`--compute-dtype f16`, the T4 path) against the CPU, per element:
//! the guarded conversion lists exactly the rows with a value beyond f16's range, the f16 GEMM
//! matches the CPU product of the f16-rounded operands on the other rows, the fix-up gives the
//! listed rows the f32 product, and weights convert bit for bit with out-of-range values
//! counted. Run once as is and once with LAYERSTREAM_KERNEL_ARCH=75 (the T4's code paths
//! through the driver's JIT). Without a GPU each test says it skipped; with
//! LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use half::bf16;
use layerstream_kernels::gemm;
use layerstream_kernels::ops::convert::StoredDtype;
use layerstream_kernels::ops::half_guard::{
    TOTALS, f16_overflow_rows, f32_to_f16_guarded, guard_len, weights_to_f16,
};
use layerstream_runtime::cpu;
use layerstream_tests::device::{download, upload, zeros};
use layerstream_tests::{
    assert_matches_reference, f16_bits, from_f16_bits, gpu_or_skip, random_values,
};

#[test]
fn a_guarded_f16_gemm_recomputes_exactly_the_rows_beyond_range_in_f32() {
    let Some(gpu) = gpu_or_skip("f16 guarded gemm") else {
        return;
    };
    for (rows, inf, outf) in [(1, 64, 96), (37, 200, 129), (300, 1024, 513)] {
        let mut x = random_values(rows * inf, 20, 2.0);
        let w = from_f16_bits(&f16_bits(&random_values(outf * inf, 21, 0.1)));
        // Beyond range: 65520 rounds to inf; 65504 is f16's largest finite value and stays.
        let beyond: Vec<usize> = [rows / 2, rows - 1]
            .into_iter()
            .filter(|&r| r > 0 || rows == 1)
            .collect();
        for &r in &beyond {
            x[r * inf + inf / 3] = -65520.0;
            x[r * inf + inf / 2] = 1.0e6;
        }
        if rows > 2 {
            x[inf + 1] = 65504.0; // row 1: fits
            x[2 * inf + 2] = f32::INFINITY; // row 2: not finite, so no overflow either
        }
        let mut guard = gpu.stream.alloc_zeros::<u32>(guard_len(rows)).unwrap();
        let mut x16 = gpu.stream.alloc_zeros::<u16>(rows * inf).unwrap();
        let xd = upload(&gpu, &x);
        f32_to_f16_guarded(
            &gpu,
            &xd.as_view(),
            &mut x16.as_view_mut(),
            (rows, inf),
            &mut guard.as_view_mut(),
        )
        .unwrap();
        let what = format!("f16 gemm {rows}x{inf}x{outf}");
        assert_eq!(download(&gpu, &x16), f16_bits(&x), "{what}: the f16 copy");
        let listed = download(&gpu, &guard);
        let mut got_rows: Vec<usize> = listed[1..1 + listed[0] as usize]
            .iter()
            .map(|&r| r as usize)
            .collect();
        got_rows.sort();
        let mut want_rows = beyond.clone();
        want_rows.dedup();
        assert_eq!(got_rows, want_rows, "{what}: the rows listed");

        let wd = upload(&gpu, &f16_bits(&w));
        let mut y = zeros(&gpu, rows * outf);
        gemm::linear_f16(
            &gpu,
            &x16.as_view(),
            &wd.as_view(),
            &mut y.as_view_mut(),
            rows,
            inf,
            outf,
        )
        .unwrap();
        let mut totals = gpu.stream.alloc_zeros::<u64>(TOTALS).unwrap();
        f16_overflow_rows(
            &gpu,
            &xd.as_view(),
            &wd.as_view(),
            &mut y.as_view_mut(),
            (rows, inf, outf),
            &guard.as_view(),
            &mut totals.as_view_mut(),
        )
        .unwrap();
        let got = download(&gpu, &y);
        assert_eq!(
            download(&gpu, &totals),
            [want_rows.len() as u64, 0, 0],
            "{what}: rows recomputed"
        );
        // Listed rows: the f32 product of the f32 input. Others: the product of the
        // f16-rounded input (row 2's infinity included: it is what f32 would give too).
        let mut exact = vec![0f32; rows * outf];
        cpu::linear::linear(&x, &w, None, &mut exact, inf, outf, 2);
        let mut rounded = vec![0f32; rows * outf];
        cpu::linear::linear(
            &from_f16_bits(&f16_bits(&x)),
            &w,
            None,
            &mut rounded,
            inf,
            outf,
            2,
        );
        for r in 0..rows {
            let span = r * outf..(r + 1) * outf;
            let expect = match want_rows.contains(&r) {
                true => &exact[span.clone()],
                false => &rounded[span.clone()],
            };
            if expect.iter().any(|v| !v.is_finite()) {
                // An infinite input makes every output +-inf (NaN where the weight is 0).
                let same = |(g, e): (&f32, &f32)| (g.is_nan() && e.is_nan()) || g == e;
                assert!(
                    got[span.clone()].iter().zip(expect).all(same),
                    "{what}: row {r} (not finite)"
                );
                continue;
            }
            assert_matches_reference(&format!("{what} row {r}"), &got[span], expect);
        }
    }
}

#[test]
fn weights_convert_to_f16_bit_for_bit_and_count_what_does_not_fit() {
    let Some(gpu) = gpu_or_skip("f16 weights") else {
        return;
    };
    let n = 5000;
    let mut values = random_values(n, 22, 0.05);
    values[7] = 1.0e-7; // an f16 subnormal
    values[8] = 65504.0;
    values[9] = -3.0e5; // beyond
    values[10] = 1.0e9; // beyond
    let expect = f16_bits(&values);
    // bf16 stores 65504 as 65536, a third value beyond f16's range.
    for (dtype, beyond) in [(StoredDtype::F32, 2), (StoredDtype::Bf16, 3)] {
        let (bytes, expect): (Vec<u8>, Vec<u16>) = match dtype {
            StoredDtype::F32 => (
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                expect.clone(),
            ),
            _ => {
                let stored: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
                assert_eq!(stored[8].to_f32(), 65536.0);
                let as_f32: Vec<f32> = stored.iter().map(|b| b.to_f32()).collect();
                (
                    stored
                        .iter()
                        .flat_map(|b| b.to_bits().to_le_bytes())
                        .collect(),
                    f16_bits(&as_f32),
                )
            }
        };
        let mut out = gpu.stream.alloc_zeros::<u16>(n).unwrap();
        let mut totals = gpu.stream.alloc_zeros::<u64>(TOTALS).unwrap();
        weights_to_f16(
            &gpu,
            &upload(&gpu, &bytes).as_view(),
            dtype,
            &mut out.as_view_mut(),
            &mut totals.as_view_mut(),
        )
        .unwrap();
        assert_eq!(download(&gpu, &out), expect, "{dtype:?} weights");
        assert_eq!(
            download(&gpu, &totals),
            [0, 0, beyond],
            "{dtype:?}: {beyond} beyond range"
        );
    }
    assert!(
        weights_to_f16(
            &gpu,
            &upload(&gpu, &[0u8; 4]).as_view(),
            StoredDtype::F16,
            &mut gpu.stream.alloc_zeros::<u16>(2).unwrap().as_view_mut(),
            &mut gpu.stream.alloc_zeros::<u64>(TOTALS).unwrap().as_view_mut(),
        )
        .is_err(),
        "f16 weights are used in place"
    );
}
