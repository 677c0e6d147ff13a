//! The Gated DeltaNet's CUDA kernels against the CPU reference, per element: the causal
//! convolution (f32 and bf16 weights), and the chunked delta rule (transformers' chunked
//! form on batched GEMMs) against the CPU's recurrent form. The two forms are equal in
//! exact arithmetic; in f32 they differ by rounding only (a few 1e-6 of the output's scale
//! over the chunk sums), with TF32 tensor cores (bf16 runs) by the 10-bit mantissa of the
//! GEMM inputs (about 1e-3 relative per product). Without a GPU each test says it skipped;
//! with LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, DeviceRepr};
use layerstream_kernels::ops::delta_net::{
    self, CHUNK, ChunkBuffers, ConvWeight, DeltaDims, DeltaInputs,
};
use layerstream_runtime::arch::DeltaNetSpec;
use layerstream_runtime::cpu::delta_net as cpu;
use layerstream_tests::{assert_all_close, gpu_or_skip, nmse, random_values};

fn upload<T: DeviceRepr>(gpu: &Gpu, values: &[T]) -> CudaSlice<T> {
    gpu.stream.clone_htod(values).unwrap()
}

fn zeros(gpu: &Gpu, n: usize) -> CudaSlice<f32> {
    gpu.stream.alloc_zeros(n.max(1)).unwrap()
}

#[test]
fn causal_convolution_matches_the_cpu_with_f32_and_bf16_weights() {
    let Some(gpu) = gpu_or_skip("delta net convolution") else {
        return;
    };
    let (sequences, seq_len, channels, kernel) = (3, 37, 96, 4);
    let rows = sequences * seq_len;
    let input = random_values(rows * channels, 3, 2.0);
    let weight: Vec<f32> = random_values(channels * kernel, 4, 1.0)
        .iter()
        .map(|w| half::bf16::from_f32(*w).to_f32())
        .collect();
    let mut expect = vec![0f32; rows * channels];
    let packed = layerstream_runtime::Sequences::uniform(sequences, seq_len);
    cpu::causal_conv_silu(&input, &weight, &mut expect, kernel, &packed);
    let input_d = upload(&gpu, &input);
    let bits: Vec<u16> = weight
        .iter()
        .map(|w| half::bf16::from_f32(*w).to_bits())
        .collect();
    let (w32, w16) = (upload(&gpu, &weight), upload(&gpu, &bits));
    for (what, w) in [
        ("f32", ConvWeight::F32(w32.as_view())),
        ("bf16", ConvWeight::Bf16(w16.as_view())),
    ] {
        let mut out = zeros(&gpu, rows * channels);
        let shape = (rows, channels, kernel, seq_len);
        delta_net::causal_conv_silu(&gpu, &input_d.as_view(), &w, &mut out.as_view_mut(), shape)
            .unwrap();
        let got = gpu.stream.clone_dtoh(&out).unwrap();
        assert_all_close(&format!("conv {what} weights"), &got, &expect, 1e-6, 1e-5);
    }
}

/// One configuration: `tf32` or full f32 GEMMs, checked against the CPU's recurrent form
/// with `atol` of the output's largest magnitude plus `rtol`.
fn delta_rule_case(
    gpu: &Gpu,
    delta: DeltaNetSpec,
    (sequences, seq_len): (usize, usize),
    tf32: bool,
) {
    let rows = sequences * seq_len;
    let (h, kh, dk, dv) = (
        delta.value_heads,
        delta.key_heads,
        delta.key_dim,
        delta.value_dim,
    );
    let seed = (dk + seq_len) as u64 + tf32 as u64;
    let q = random_values(rows * kh * dk, seed, 1.0);
    let k = random_values(rows * kh * dk, seed + 1, 1.0);
    let v = random_values(rows * h * dv, seed + 2, 1.0);
    let b = random_values(rows * h, seed + 3, 2.0);
    let a = random_values(rows * h, seed + 4, 2.0);
    // Decay rates from slow to fast (A = 0.05 ... 8), dt_bias around 0: g from about -0.01
    // to -20 per token, so some heads forget within a chunk and others carry across chunks.
    let a_log: Vec<f32> = (0..h)
        .map(|i| (0.05f32 * 160f32.powf(i as f32 / (h - 1) as f32)).ln())
        .collect();
    let dt_bias = random_values(h, seed + 5, 0.5);
    let inputs = cpu::DeltaInputs {
        q: &q,
        k: &k,
        v: &v,
        b: &b,
        a: &a,
        a_log: &a_log,
        dt_bias: &dt_bias,
    };
    let mut states = vec![0f32; sequences * h * dk * dv];
    let mut expect = vec![0f32; rows * h * dv];
    cpu::delta_rule(
        &inputs,
        &delta,
        &layerstream_runtime::Sequences::uniform(sequences, seq_len),
        &mut states,
        &mut expect,
        4,
    );

    let dims = DeltaDims {
        sequences,
        seq_len,
        heads: h,
        key_heads: kh,
        key_dim: dk,
        value_dim: dv,
    };
    let hp = sequences * h * dims.padded();
    let [q_d, k_d, v_d, b_d, a_d, a_log_d, dt_d] =
        [&q, &k, &v, &b, &a, &a_log, &dt_bias].map(|x| upload(gpu, x));
    let gpu_inputs = DeltaInputs {
        q: q_d.as_view(),
        k: k_d.as_view(),
        v: v_d.as_view(),
        b: b_d.as_view(),
        a: a_d.as_view(),
        a_log: a_log_d.as_view(),
        dt_bias: dt_d.as_view(),
    };
    let mut slices = [
        hp * dk,
        hp * dk,
        hp * (dk + dv),
        hp * (dk + dv),
        hp * CHUNK,
        hp * CHUNK,
        hp,
        hp,
        hp * dv,
        sequences * h * dk * dv,
    ]
    .map(|n| zeros(gpu, n));
    let [sq, sk, sw, su, st, sa, sg, sb, so, ss] = &mut slices;
    let mut buffers = ChunkBuffers {
        q: sq.as_view_mut(),
        k: sk.as_view_mut(),
        w: sw.as_view_mut(),
        u: su.as_view_mut(),
        t: st.as_view_mut(),
        a: sa.as_view_mut(),
        g: sg.as_view_mut(),
        beta: sb.as_view_mut(),
        out: so.as_view_mut(),
        state: ss.as_view_mut(),
    };
    let mut core = zeros(gpu, rows * h * dv);
    delta_net::chunked_delta_rule(
        gpu,
        &gpu_inputs,
        &mut buffers,
        &mut core.as_view_mut(),
        dims,
        tf32,
    )
    .unwrap();
    let got = gpu.stream.clone_dtoh(&core).unwrap();
    let scale = expect.iter().fold(0f32, |m, x| m.max(x.abs()));
    let what = format!("delta rule dk {dk}, {sequences} x {seq_len}, tf32 {tf32}");
    let (atol, rtol) = if tf32 { (2e-2, 2e-2) } else { (2e-5, 1e-4) };
    assert_all_close(&what, &got, &expect, atol * scale, rtol);
    let error = nmse(&got, &expect);
    println!("{what}: max |out| {scale:.3}, NMSE {error:.3e}");
    assert!(
        error < if tf32 { 1e-5 } else { 1e-10 },
        "{what}: NMSE {error}"
    );
}

#[test]
fn chunked_delta_rule_matches_the_recurrent_form() {
    let Some(gpu) = gpu_or_skip("chunked delta rule") else {
        return;
    };
    let small = DeltaNetSpec {
        key_heads: 2,
        value_heads: 4,
        key_dim: 32,
        value_dim: 16,
        conv_kernel: 4,
    };
    // Qwen3-Next's heads: 16 key heads of 128, 32 value heads of 128.
    let qwen = DeltaNetSpec {
        key_heads: 16,
        value_heads: 32,
        key_dim: 128,
        value_dim: 128,
        conv_kernel: 4,
    };
    for tf32 in [false, true] {
        // One partial chunk, two chunks and a partial one, whole chunks.
        delta_rule_case(&gpu, small, (3, 17), tf32);
        delta_rule_case(&gpu, small, (2, 150), tf32);
        delta_rule_case(&gpu, qwen, (2, 256), tf32);
    }
}
