//! The Gated DeltaNet on the GPU (`delta_net.cu` and batched cuBLAS GEMMs): the causal
//! convolution, and the gated delta rule in transformers' chunked form (chunks of 64,
//! `torch_chunk_gated_delta_rule`): per chunk the intra-chunk products for every chunk at
//! once as batched GEMMs, then one pass over the chunks carrying each (sequence, value head)'s
//! state `S (key_dim, value_dim)` with batched GEMMs over the heads. With `tf32` the GEMMs
//! run on tensor cores (TF32 inputs, f32 accumulation); without, in full f32.

use super::{check_len, grid_for, launch};
use crate::error::{KernelError, Result};
use crate::gemm::{BatchedGemm, Operand, batched_row_major};
use crate::gpu::Gpu;
use crate::sources::DELTA_NET;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtrMut, LaunchConfig};

/// Tokens per chunk.
pub const CHUNK: usize = 64;

/// A convolution weight `(channels, 1, kernel)` as the GEMMs hold weights.
pub enum ConvWeight<'a> {
    /// f32 values.
    F32(CudaView<'a, f32>),
    /// bf16 bit patterns.
    Bf16(CudaView<'a, u16>),
    /// f16 bit patterns (the f16 path).
    F16(CudaView<'a, u16>),
}

/// `out (rows, channels) = silu(causal depthwise conv(input))` per sequence of `seq_len`.
pub fn causal_conv_silu(
    gpu: &Gpu,
    input: &CudaView<f32>,
    weight: &ConvWeight,
    out: &mut CudaViewMut<f32>,
    (rows, channels, kernel, seq_len): (usize, usize, usize, usize),
) -> Result<()> {
    let n = rows * channels;
    check_len("conv input", input, n)?;
    check_len("conv out", out, n)?;
    let n64 = n as u64;
    let (c, k, t) = (channels as i32, kernel as i32, seq_len as i32);
    match weight {
        ConvWeight::F32(w) => {
            check_len("conv weight", w, channels * kernel)?;
            launch!(
                gpu,
                DELTA_NET,
                "causal_conv_silu_f32_kernel",
                grid_for(n),
                input,
                w,
                out,
                &n64,
                &c,
                &k,
                &t
            )
        }
        ConvWeight::Bf16(w) | ConvWeight::F16(w) => {
            check_len("conv weight", w, channels * kernel)?;
            let name = match weight {
                ConvWeight::F16(_) => "causal_conv_silu_f16_kernel",
                _ => "causal_conv_silu_bf16_kernel",
            };
            launch!(
                gpu,
                DELTA_NET,
                name,
                grid_for(n),
                input,
                w,
                out,
                &n64,
                &c,
                &k,
                &t
            )
        }
    }
}

/// The shapes of one delta-rule call.
#[derive(Debug, Clone, Copy)]
pub struct DeltaDims {
    /// Sequences.
    pub sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Value heads.
    pub heads: usize,
    /// Query/key heads (value head `h` reads key head `h / (heads / key_heads)`).
    pub key_heads: usize,
    /// Per-head query/key width.
    pub key_dim: usize,
    /// Per-head value width.
    pub value_dim: usize,
}

impl DeltaDims {
    /// Tokens per sequence padded to whole chunks.
    pub fn padded(&self) -> usize {
        self.seq_len.div_ceil(CHUNK) * CHUNK
    }

    fn rows(&self) -> usize {
        self.sequences * self.seq_len
    }
}

/// What the delta rule reads, token-major.
pub struct DeltaInputs<'a> {
    /// `(rows, key_heads * key_dim)`: convolved queries.
    pub q: CudaView<'a, f32>,
    /// `(rows, key_heads * key_dim)`: convolved keys.
    pub k: CudaView<'a, f32>,
    /// `(rows, heads * value_dim)`: convolved values.
    pub v: CudaView<'a, f32>,
    /// `(rows, heads)`: b (beta = sigmoid(b)).
    pub b: CudaView<'a, f32>,
    /// `(rows, heads)`: a (g = -exp(A_log) softplus(a + dt_bias)).
    pub a: CudaView<'a, f32>,
    /// `(heads)`.
    pub a_log: CudaView<'a, f32>,
    /// `(heads)`.
    pub dt_bias: CudaView<'a, f32>,
}

/// The chunked form's buffers (the planner's `DeltaChunk*` and `DeltaState`), head-major
/// over `P` padded rows per (sequence, head) block.
pub struct ChunkBuffers<'a> {
    /// `(S, H, P, dk)` normed, scaled queries.
    pub q: CudaViewMut<'a, f32>,
    /// `(S, H, P, dk)` normed keys.
    pub k: CudaViewMut<'a, f32>,
    /// `(S, H, P, dv + dk)`: `[beta v | beta exp(g) k]`.
    pub w: CudaViewMut<'a, f32>,
    /// `(S, H, P, dv + dk)`: `T W` = `[value | k_cumdecay]`, then `[v_new | ...]`.
    pub u: CudaViewMut<'a, f32>,
    /// `(S, H, P, 64)`: each chunk's `T`.
    pub t: CudaViewMut<'a, f32>,
    /// `(S, H, P, 64)`: each chunk's `K K^T`, then its decayed `Q K^T`.
    pub a: CudaViewMut<'a, f32>,
    /// `(S, H, P)`: cumulative log decay within the chunk.
    pub g: CudaViewMut<'a, f32>,
    /// `(S, H, P)`: beta.
    pub beta: CudaViewMut<'a, f32>,
    /// `(S, H, P, dv)`: the output, head-major.
    pub out: CudaViewMut<'a, f32>,
    /// `(S, H, dk, dv)`: the recurrent state.
    pub state: CudaViewMut<'a, f32>,
}

fn address<T>(gpu: &Gpu, view: &mut CudaViewMut<T>) -> u64 {
    let (ptr, _record) = view.device_ptr_mut(&gpu.stream);
    ptr
}

fn operand(ptr: u64, offset: usize, ld: usize, stride: usize, transposed: bool) -> Operand {
    Operand {
        ptr: ptr + 4 * offset as u64,
        ld,
        stride,
        transposed,
    }
}

/// The gated delta rule of every sequence and value head from zero state into `core (rows,
/// heads * value_dim)`.
pub fn chunked_delta_rule(
    gpu: &Gpu,
    inputs: &DeltaInputs,
    buffers: &mut ChunkBuffers,
    core: &mut CudaViewMut<f32>,
    dims: DeltaDims,
    tf32: bool,
) -> Result<()> {
    let d = dims;
    let (h, dk, dv, p) = (d.heads, d.key_dim, d.value_dim, d.padded());
    if h == 0 || d.key_heads == 0 || !h.is_multiple_of(d.key_heads) {
        return Err(KernelError::Unsupported(format!(
            "delta rule: {h} value heads over {} key heads",
            d.key_heads
        )));
    }
    let (rows, heads_p) = (d.rows(), d.sequences * h * p);
    let chunks = p / CHUNK;
    let wide = dv + dk;
    check_len("delta q", &inputs.q, rows * d.key_heads * dk)?;
    check_len("delta k", &inputs.k, rows * d.key_heads * dk)?;
    check_len("delta v", &inputs.v, rows * h * dv)?;
    check_len("delta b", &inputs.b, rows * h)?;
    check_len("delta a", &inputs.a, rows * h)?;
    let b = buffers;
    for (what, len, needed) in [
        ("q", b.q.len(), heads_p * dk),
        ("k", b.k.len(), heads_p * dk),
        ("w", b.w.len(), heads_p * wide),
        ("u", b.u.len(), heads_p * wide),
        ("t", b.t.len(), heads_p * CHUNK),
        ("a", b.a.len(), heads_p * CHUNK),
        ("g", b.g.len(), heads_p),
        ("beta", b.beta.len(), heads_p),
        ("out", b.out.len(), heads_p * dv),
        ("state", b.state.len(), d.sequences * h * dk * dv),
        ("core", core.len(), rows * h * dv),
    ] {
        if len < needed {
            return Err(KernelError::Unsupported(format!(
                "delta rule {what}: buffer of {len} elements, shape needs {needed}"
            )));
        }
    }
    let [h_i, kh_i, dk_i, dv_i, t_i, p_i, s_i] =
        [h, d.key_heads, dk, dv, d.seq_len, p, d.sequences].map(|v| v as i32);
    launch!(
        gpu,
        DELTA_NET,
        "delta_gates_kernel",
        grid_for(d.sequences * h * chunks),
        &inputs.b,
        &inputs.a,
        &inputs.a_log,
        &inputs.dt_bias,
        &mut b.g,
        &mut b.beta,
        &s_i,
        &h_i,
        &t_i,
        &p_i
    )?;
    let (g, beta) = (b.g.as_view(), b.beta.as_view());
    let per_token = LaunchConfig {
        grid_dim: (heads_p as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        gpu,
        DELTA_NET,
        "delta_prepare_kernel",
        per_token,
        &inputs.q,
        &inputs.k,
        &inputs.v,
        &g,
        &beta,
        &mut b.q,
        &mut b.k,
        &mut b.w,
        &h_i,
        &kh_i,
        &dk_i,
        &dv_i,
        &t_i,
        &p_i
    )?;
    let [q, k, w, u, t, a, out, state] = [
        address(gpu, &mut b.q),
        address(gpu, &mut b.k),
        address(gpu, &mut b.w),
        address(gpu, &mut b.u),
        address(gpu, &mut b.t),
        address(gpu, &mut b.a),
        address(gpu, &mut b.out),
        address(gpu, &mut b.state),
    ];
    let all_chunks = d.sequences * h * chunks;
    let square = CHUNK * CHUNK;
    let gemm = |m, n, kk, a: Operand, bb: Operand, c: Operand, batch, alpha, beta| {
        let spec = BatchedGemm {
            m,
            n,
            k: kk,
            a,
            b: bb,
            c,
            batch,
            alpha,
            beta,
            tf32,
        };
        // SAFETY: every operand lies in a buffer checked above to hold its batch members
        // (chunks of P rows per (sequence, head) block); outputs share no elements with inputs.
        unsafe { batched_row_major(gpu, &spec) }
    };
    // Intra-chunk, every chunk at once: K K^T -> a; T -> t; T W -> u; Q K^T -> a (decayed).
    let chunk_of = |ptr, width| operand(ptr, 0, width, CHUNK * width, false);
    let k_t = operand(k, 0, dk, CHUNK * dk, true);
    gemm(
        CHUNK,
        CHUNK,
        dk,
        chunk_of(k, dk),
        k_t,
        chunk_of(a, CHUNK),
        all_chunks,
        1.0,
        0.0,
    )?;
    let per_chunk = LaunchConfig {
        grid_dim: (all_chunks as u32, 1, 1),
        block_dim: (CHUNK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let kk = b.a.as_view();
    launch!(
        gpu,
        DELTA_NET,
        "delta_triangular_kernel",
        per_chunk,
        &kk,
        &g,
        &beta,
        &mut b.t
    )?;
    gemm(
        CHUNK,
        wide,
        CHUNK,
        chunk_of(t, CHUNK),
        chunk_of(w, wide),
        chunk_of(u, wide),
        all_chunks,
        1.0,
        0.0,
    )?;
    gemm(
        CHUNK,
        CHUNK,
        dk,
        chunk_of(q, dk),
        k_t,
        chunk_of(a, CHUNK),
        all_chunks,
        1.0,
        0.0,
    )?;
    let n_a = (all_chunks * square) as u64;
    launch!(
        gpu,
        DELTA_NET,
        "delta_decay_mask_kernel",
        grid_for(all_chunks * square),
        &mut b.a,
        &g,
        &n_a
    )?;
    let n_qk = (heads_p * dk) as u64;
    launch!(
        gpu,
        DELTA_NET,
        "delta_decay_rows_kernel",
        grid_for(heads_p * dk),
        &mut b.q,
        &mut b.k,
        &g,
        &n_qk,
        &dk_i
    )?;
    gpu.stream
        .memset_zeros(&mut b.state)
        .map_err(KernelError::from)?;
    // Across chunks, batched over (sequence, head) blocks of P rows.
    let heads_total = d.sequences * h;
    let per_state = dk * dv;
    let n_state = (heads_total * per_state) as u64;
    let per_state_i = per_state as i32;
    let state_op = operand(state, 0, dv, per_state, false);
    for c in 0..chunks {
        let at =
            |ptr, width, offset| operand(ptr, c * CHUNK * width + offset, width, p * width, false);
        let (v_new, k_cumdecay) = (at(u, wide, 0), at(u, wide, dv));
        // v_new = value - k_cumdecay S
        gemm(
            CHUNK,
            dv,
            dk,
            k_cumdecay,
            state_op,
            v_new,
            heads_total,
            -1.0,
            1.0,
        )?;
        // out = (q exp(g)) S + A v_new
        let out_c = at(out, dv, 0);
        gemm(
            CHUNK,
            dv,
            dk,
            at(q, dk, 0),
            state_op,
            out_c,
            heads_total,
            1.0,
            0.0,
        )?;
        gemm(
            CHUNK,
            dv,
            CHUNK,
            at(a, CHUNK, 0),
            v_new,
            out_c,
            heads_total,
            1.0,
            1.0,
        )?;
        // S = S exp(g_last) + (k exp(g_last - g))^T v_new
        let chunk_i = c as i32;
        launch!(
            gpu,
            DELTA_NET,
            "delta_state_decay_kernel",
            grid_for(heads_total * per_state),
            &mut b.state,
            &g,
            &n_state,
            &per_state_i,
            &p_i,
            &chunk_i
        )?;
        let k_chunk_t = Operand {
            transposed: true,
            ..at(k, dk, 0)
        };
        gemm(
            dk,
            dv,
            CHUNK,
            k_chunk_t,
            v_new,
            state_op,
            heads_total,
            1.0,
            1.0,
        )?;
    }
    let n_core = (rows * h * dv) as u64;
    let out_view = b.out.as_view();
    launch!(
        gpu,
        DELTA_NET,
        "delta_output_kernel",
        grid_for(rows * h * dv),
        &out_view,
        core,
        &n_core,
        &h_i,
        &dv_i,
        &t_i,
        &p_i
    )
}
