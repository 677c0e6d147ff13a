//! The f16 path's MoE expert kernels against the CPU, per element: the guarded gather writes
//! each assignment's row as f16 bits and lists exactly the tokens with a value beyond f16's
//! range, each expert's fix-up gives exactly those tokens' rows of that expert the f32 product
//! (the others keep the f16 GEMM's product of the rounded rows) and counts them, and the
//! guarded activation writes `act(gate, up)` in f32 and f16 and lists exactly the rows beyond
//! range. Run once as is and once with LAYERSTREAM_KERNEL_ARCH=75 (the T4's code paths).
//! Without a GPU each test says it skipped; with LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use layerstream_kernels::gemm;
use layerstream_kernels::ops::elementwise::{GatedActivation, gated_activation_f16_guarded};
use layerstream_kernels::ops::half_guard::{TOTALS, f16_overflow_expert_rows, guard_len};
use layerstream_kernels::ops::moe::gather_by_expert_f16_guarded;
use layerstream_runtime::cpu;
use layerstream_tests::device::{download, upload, zeros};
use layerstream_tests::{
    assert_matches_reference, f16_bits, from_f16_bits, gpu_or_skip, random_values,
};

/// The listed entries of a guard (sorted).
fn listed(guard: &[u32]) -> Vec<usize> {
    let mut rows: Vec<usize> = guard[1..1 + guard[0] as usize]
        .iter()
        .map(|&r| r as usize)
        .collect();
    rows.sort();
    rows
}

/// `top_k` distinct experts of `experts` per token, and each assignment's row when the
/// assignments are grouped by expert (ascending), in assignment order within an expert.
fn routing(tokens: usize, top_k: usize, experts: usize) -> (Vec<usize>, Vec<u32>) {
    let mut chosen = Vec::with_capacity(tokens * top_k);
    for t in 0..tokens {
        let first = (t * 7 + t / 3) % experts;
        chosen.extend((0..top_k).map(|j| (first + j + j / 2) % experts));
    }
    for t in 0..tokens {
        let mine = &chosen[t * top_k..(t + 1) * top_k];
        let mut sorted = mine.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), top_k, "token {t}: distinct experts {mine:?}");
    }
    let mut order: Vec<usize> = (0..tokens * top_k).collect();
    order.sort_by_key(|&a| (chosen[a], a));
    let mut positions = vec![0u32; tokens * top_k];
    for (row, &a) in order.iter().enumerate() {
        positions[a] = row as u32;
    }
    (chosen, positions)
}

#[test]
fn expert_rows_gather_in_f16_and_tokens_beyond_range_are_recomputed_in_f32() {
    let Some(gpu) = gpu_or_skip("f16 expert rows") else {
        return;
    };
    let (tokens, top_k, experts, hidden, inter) = (37, 3, 5, 200, 129);
    let (chosen, positions) = routing(tokens, top_k, experts);
    let mut x = random_values(tokens * hidden, 30, 2.0);
    let beyond = [5usize, 36];
    for &t in &beyond {
        x[t * hidden + 3] = 1.0e6;
        x[t * hidden + hidden - 1] = -65520.0;
    }
    x[hidden + 1] = 65504.0; // token 1: fits
    let assignments = tokens * top_k;
    let xd = upload(&gpu, &x);
    let pd = upload(&gpu, &positions);
    let mut gathered = zeros::<u16>(&gpu, assignments * hidden);
    let mut guard = upload(&gpu, &vec![7u32; guard_len(tokens)]); // reset by the gather
    gather_by_expert_f16_guarded(
        &gpu,
        &xd.as_view(),
        &pd.as_view(),
        top_k,
        hidden,
        &mut gathered.as_view_mut(),
        &mut guard.as_view_mut(),
    )
    .unwrap();
    let bits = download(&gpu, &gathered);
    let mut rounded_rows = vec![0f32; assignments * hidden]; // (assignments, hidden) grouped
    for (a, &row) in positions.iter().enumerate() {
        let (t, row) = (a / top_k, row as usize);
        let want = f16_bits(&x[t * hidden..(t + 1) * hidden]);
        assert_eq!(
            &bits[row * hidden..(row + 1) * hidden],
            &want[..],
            "assignment {a}: the f16 row"
        );
        rounded_rows[row * hidden..(row + 1) * hidden].copy_from_slice(&from_f16_bits(&want));
    }
    assert_eq!(listed(&download(&gpu, &guard)), beyond, "the tokens listed");

    let mut totals = zeros::<u64>(&gpu, TOTALS);
    let mut recomputed = 0u64;
    for expert in 0..experts {
        let rows: Vec<usize> = (0..assignments)
            .filter(|&a| chosen[a] == expert)
            .map(|a| positions[a] as usize)
            .collect();
        let (start, n) = (rows[0], rows.len());
        let w = from_f16_bits(&f16_bits(&random_values(
            inter * hidden,
            40 + expert as u64,
            0.1,
        )));
        let wd = upload(&gpu, &f16_bits(&w));
        let mut y = zeros::<f32>(&gpu, n * inter);
        let rows_in = gathered.slice(start * hidden..(start + n) * hidden);
        gemm::linear_f16(
            &gpu,
            &rows_in,
            &wd.as_view(),
            &mut y.as_view_mut(),
            n,
            hidden,
            inter,
        )
        .unwrap();
        f16_overflow_expert_rows(
            &gpu,
            &xd.as_view(),
            &wd.as_view(),
            &mut y.as_view_mut(),
            (hidden, inter),
            &guard.as_view(),
            &pd.as_view(),
            top_k,
            start..start + n,
            &mut totals.as_view_mut(),
        )
        .unwrap();
        let got = download(&gpu, &y);
        for a in (0..assignments).filter(|&a| chosen[a] == expert) {
            let (t, row) = (a / top_k, positions[a] as usize);
            let input = match beyond.contains(&t) {
                true => &x[t * hidden..(t + 1) * hidden],
                false => &rounded_rows[row * hidden..(row + 1) * hidden],
            };
            recomputed += beyond.contains(&t) as u64;
            let mut expect = vec![0f32; inter];
            cpu::linear::linear(input, &w, None, &mut expect, hidden, inter, 1);
            let local = row - start;
            assert_matches_reference(
                &format!(
                    "expert {expert} token {t} (beyond: {})",
                    beyond.contains(&t)
                ),
                &got[local * inter..(local + 1) * inter],
                &expect,
            );
        }
    }
    assert!(recomputed >= 2, "the planted tokens reach experts");
    assert_eq!(
        download(&gpu, &totals),
        [recomputed, 0, 0],
        "each recomputed expert row counted once"
    );
}

#[test]
fn the_guarded_activation_writes_f32_and_f16_and_lists_the_rows_beyond_range() {
    let Some(gpu) = gpu_or_skip("f16 guarded activation") else {
        return;
    };
    let (rows, cols) = (41, 129);
    for activation in [
        GatedActivation::Silu,
        GatedActivation::ClampedSwiglu {
            limit: 7.0,
            alpha: 1.702,
        },
    ] {
        let mut gate = random_values(rows * cols, 50, 3.0);
        let mut up = random_values(rows * cols, 51, 3.0);
        // Rows 4 and 40: act(gate, up) far beyond f16 without a clamp; row 9 stays near 1000.
        for r in [4usize, 40] {
            gate[r * cols + 2] = 400.0;
            up[r * cols + 2] = 5000.0;
        }
        gate[9 * cols] = 40.0;
        up[9 * cols] = 25.0;
        let expect: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| match activation {
                GatedActivation::Silu => g / (1.0 + (-g).exp()) * u,
                GatedActivation::ClampedSwiglu { limit, alpha } => {
                    let x = g.min(limit);
                    (u.clamp(-limit, limit) + 1.0) * x / (1.0 + (-x * alpha).exp())
                }
            })
            .collect();
        let mut gd = upload(&gpu, &gate);
        let ud = upload(&gpu, &up);
        let mut out = zeros::<u16>(&gpu, rows * cols);
        let mut guard = upload(&gpu, &vec![3u32; guard_len(rows)]); // reset by the kernel
        gated_activation_f16_guarded(
            &gpu,
            &mut gd.as_view_mut(),
            &ud.as_view(),
            &mut out.as_view_mut(),
            (rows, cols),
            &mut guard.as_view_mut(),
            activation,
        )
        .unwrap();
        let got = download(&gpu, &gd);
        let what = format!("{activation:?}");
        assert_matches_reference(&format!("{what} f32"), &got, &expect);
        assert_eq!(download(&gpu, &out), f16_bits(&got), "{what}: the f16 copy");
        let want_rows: Vec<usize> = match activation {
            GatedActivation::Silu => vec![4, 40],
            GatedActivation::ClampedSwiglu { .. } => vec![],
        };
        let beyond = |r: &usize| {
            got[r * cols..(r + 1) * cols]
                .iter()
                .any(|v| v.abs() >= 65520.0)
        };
        assert_eq!(
            (0..rows).filter(beyond).collect::<Vec<_>>(),
            want_rows,
            "{what}: the planted rows, and only they, are beyond range"
        );
        assert_eq!(
            listed(&download(&gpu, &guard)),
            want_rows,
            "{what}: rows listed"
        );
    }
}
