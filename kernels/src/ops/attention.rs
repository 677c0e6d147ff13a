//! Flash-style causal attention: f32 on CUDA cores (`attention.cu`), or bf16 (sm_80+) or f16
//! (sm_75+) operands with f32 accumulation on tensor cores (`attention_mma.cu`, K and V
//! converted once per call into a 16-bit scratch); f16 with an overflow guard that recomputes
//! in f32 the sequences whose operands do not fit f16. Either can also write the
//! attention-sink probabilities (on key 0 and each sequence's first delimiter) per query
//! into a scratch buffer, summed per (sequence, head) by [`reduce_sink_mass`].

use super::{check_len, grid_for, launch};
use crate::error::{KernelError, Result};
use crate::gpu::Gpu;
use crate::sources::{ATTENTION, ATTENTION_MMA};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig};

/// Query rows per block of the tensor-core kernel (`MMA_ROWS`).
const MMA_ROWS_PER_BLOCK: usize = 128;
/// Keys per shared-memory tile of the tensor-core kernel (`MMA_KEYS`).
const MMA_KEYS: usize = 64;
/// Largest head the tensor-core kernel takes (`MMA_MAX_HEAD_DIM`).
pub const MMA_MAX_HEAD_DIM: usize = 128;
/// Shared memory a block may use without opting in.
const DEFAULT_SHARED_BYTES: usize = 48 * 1024;

/// Query rows per block (one warp each); must match `ATTN_WARPS` in attention.cu.
const QUERY_ROWS_PER_BLOCK: usize = 8;
/// Largest head the kernel holds in registers (`ATTN_MAX_DIMS_PER_LANE * 32`).
pub const MAX_HEAD_DIM: usize = 256;

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDims {
    /// Sequences in the micro-batch.
    pub sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// `Some(w)`: each position sees the last `w` positions only.
    pub sliding_window: Option<usize>,
    /// Score scale.
    pub scale: f32,
    /// The products' operands on tensor cores (f32 accumulation and softmax) where the GPU
    /// has them and the head fits (`head_dim` a multiple of 16, at most
    /// [`MMA_MAX_HEAD_DIM`]); f32 throughout otherwise.
    pub operands: MmaOperands,
}

/// What the attention products take on tensor cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmaOperands {
    /// None: f32 on CUDA cores.
    Off,
    /// bf16 (sm_80+).
    Bf16,
    /// f16 (sm_75+), with the overflow guard ([`F16Guard`]).
    F16,
}

impl AttentionDims {
    /// Whether the tensor-core kernel runs for these dims on `gpu`.
    pub fn uses_tensor_cores(&self, gpu: &Gpu) -> bool {
        let arch = match self.operands {
            MmaOperands::Off => return false,
            MmaOperands::Bf16 => gpu.has_bf16_math(),
            MmaOperands::F16 => gpu.compute_capability >= (7, 5),
        };
        arch && self.head_dim.is_multiple_of(16) && self.head_dim <= MMA_MAX_HEAD_DIM
    }
}

/// The f16 attention's overflow guard: a flag per sequence of the call, zeroed here, set by
/// the K/V conversion and the tensor-core kernel where a Q, K or V value of the sequence
/// becomes +-inf in f16; the flagged sequences are then recomputed by the f32 kernel, each
/// counted in `totals[1]` (`half_guard.cu`'s totals). No host synchronisation.
pub struct F16Guard<'a, 'b> {
    /// At least `sequences` flags.
    pub flags: &'a mut CudaViewMut<'b, u32>,
    /// The run's overflow totals (3).
    pub totals: &'a mut CudaViewMut<'b, u64>,
}

/// What the tensor-core kernel needs besides its operands.
pub struct TensorCoreScratch<'a, 'b> {
    /// At least [`tensor_core_kv_len`] elements: K then V in the operand type.
    pub kv: &'a mut CudaViewMut<'b, u16>,
    /// f16 operands: the overflow guard.
    pub guard: Option<F16Guard<'a, 'b>>,
}

/// Elements of the tensor-core kernel's K/V scratch over `rows` rows: K and V
/// `(rows, kv_heads * head_dim)` each.
pub fn tensor_core_kv_len(dims: &AttentionDims, rows: usize) -> usize {
    2 * rows * dims.kv_heads * dims.head_dim
}

/// Probabilities per query in the sink scratch: key 0, the delimiter, the learned sink.
const SINK_VALUES: usize = 3;

/// Floats of the attention-sink scratch for `dims` over `rows` query rows in all
/// (`SINK_LAYOUT` in attention.cu): per query three probabilities, then per (sequence, head)
/// three sums as (hi, lo) float pairs.
pub fn sink_scratch_len(dims: &AttentionDims, rows: usize) -> usize {
    dims.heads * SINK_VALUES * (rows + 2 * dims.sequences)
}

/// Where the kernels put the attention-sink probabilities, and the keys they are on.
pub struct SinkScratch<'a, 'b> {
    /// [`sink_scratch_len`] floats.
    pub scratch: &'a mut CudaViewMut<'b, f32>,
    /// `(sequences)`: each sequence's first delimiter position, -1 for none.
    pub delimiters: &'a [i32],
}

/// Sequences of their own lengths in one call: sequence `s` at rows `offsets[s] - offsets[0]
/// .. offsets[s + 1] - offsets[0]` (`dims.sequences + 1` offsets, a slice of the workload's;
/// `dims.seq_len` the longest).
#[derive(Clone, Copy)]
pub struct RaggedRows<'a, 'b> {
    /// `(sequences + 1)` row offsets on the device.
    pub offsets: &'a CudaView<'b, i32>,
    /// Rows in all (`offsets[sequences]`).
    pub rows: usize,
}

/// `out = softmax(q k^T * scale + causal mask [, learned sink]) v` per sequence and head;
/// q, out `(sequences * seq_len, heads * head_dim)`, k, v `(.., kv_heads * head_dim)`;
/// `learned_sinks (heads)`: a logit per head appended to every row's softmax and dropped
/// after it. With `sinks`, every query's probability on key 0, on its sequence's delimiter
/// and on the learned sink too. With `ragged`, the sequences have their own lengths (each
/// attends within itself; no sinks then). Tensor-core operands need `tensor_cores` (f16 ones
/// its guard).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    gpu: &Gpu,
    q: &CudaView<f32>,
    k: &CudaView<f32>,
    v: &CudaView<f32>,
    out: &mut CudaViewMut<f32>,
    dims: AttentionDims,
    learned_sinks: Option<&CudaView<f32>>,
    sinks: Option<SinkScratch>,
    ragged: Option<RaggedRows>,
    tensor_cores: Option<TensorCoreScratch>,
) -> Result<()> {
    let AttentionDims {
        sequences,
        seq_len,
        heads,
        kv_heads,
        head_dim,
        sliding_window,
        ..
    } = dims;
    if head_dim > MAX_HEAD_DIM || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(KernelError::Unsupported(format!(
            "attention: head_dim {head_dim} (max {MAX_HEAD_DIM}), {heads} heads over {kv_heads} kv heads"
        )));
    }
    let rows = ragged.map_or(sequences * seq_len, |r| r.rows);
    let mut _offsets_guard = None;
    let offsets_ptr = match ragged {
        None => 0,
        Some(ragged) => {
            check_len("attention offsets", ragged.offsets, sequences + 1)?;
            let (pointer, guard) = ragged.offsets.device_ptr(&gpu.stream);
            _offsets_guard = Some(guard);
            pointer
        }
    };
    check_len("attention q", q, rows * heads * head_dim)?;
    check_len("attention k", k, rows * kv_heads * head_dim)?;
    check_len("attention v", v, rows * kv_heads * head_dim)?;
    check_len("attention out", out, rows * heads * head_dim)?;
    let window = sliding_window.map_or(0, |w| w as i32);
    let mut _learned_guard = None;
    let learned_ptr = match learned_sinks {
        None => 0,
        Some(learned) => {
            check_len("attention learned sinks", learned, heads)?;
            let (pointer, guard) = learned.device_ptr(&gpu.stream);
            _learned_guard = Some(guard);
            pointer
        }
    };
    let want_sinks = sinks.is_some() as i32;
    let mut _sink_guard = None;
    let sink_ptr = match sinks {
        None => 0,
        Some(SinkScratch {
            scratch,
            delimiters,
        }) => {
            check_len("attention sinks", scratch, sink_scratch_len(&dims, rows))?;
            if delimiters.len() != sequences {
                return Err(KernelError::Unsupported(format!(
                    "attention sinks: {} delimiters for {sequences} sequences",
                    delimiters.len()
                )));
            }
            // The delimiters travel as float bits in the sums' place, read before those are
            // written.
            let bits: Vec<f32> = delimiters
                .iter()
                .map(|&d| f32::from_bits(d as u32))
                .collect();
            let tail = rows * heads * SINK_VALUES;
            gpu.stream
                .memcpy_htod(&bits, &mut scratch.slice_mut(tail..tail + sequences))?;
            let (pointer, guard) = scratch.device_ptr_mut(&gpu.stream);
            _sink_guard = Some(guard);
            pointer
        }
    };
    let args = KernelArgs {
        q,
        k,
        v,
        dims,
        window,
        learned_ptr,
        sink_ptr,
        want_sinks,
        offsets_ptr,
    };
    if !dims.uses_tensor_cores(gpu) {
        return f32_attention(gpu, &args, out, None);
    }
    let Some(TensorCoreScratch { kv, guard }) = tensor_cores else {
        return Err(KernelError::Unsupported(
            "tensor-core attention without its K/V scratch".into(),
        ));
    };
    check_len(
        "attention K/V scratch",
        &*kv,
        tensor_core_kv_len(&dims, rows),
    )?;
    if dims.operands == MmaOperands::Bf16 {
        return mma_attention(gpu, &args, kv, rows, out, None);
    }
    let Some(F16Guard { flags, totals }) = guard else {
        return Err(KernelError::Unsupported(
            "f16 attention without its overflow guard".into(),
        ));
    };
    check_len("attention f16 flags", &*flags, sequences)?;
    check_len("attention f16 totals", &*totals, 3)?;
    let mut flags = flags.slice_mut(..sequences);
    gpu.stream.memset_zeros(&mut flags)?;
    let (flags_ptr, _flags_guard) = flags.device_ptr_mut(&gpu.stream);
    let (totals_ptr, _totals_guard) = totals.device_ptr_mut(&gpu.stream);
    mma_attention(gpu, &args, kv, rows, out, Some(flags_ptr))?;
    // The sequences flagged, again in f32 (the other blocks return at once).
    f32_attention(gpu, &args, out, Some((flags_ptr, totals_ptr)))
}

/// What both attention kernels take besides the output.
struct KernelArgs<'a, 'b> {
    q: &'a CudaView<'b, f32>,
    k: &'a CudaView<'b, f32>,
    v: &'a CudaView<'b, f32>,
    dims: AttentionDims,
    window: i32,
    learned_ptr: u64,
    sink_ptr: u64,
    want_sinks: i32,
    offsets_ptr: u64,
}

/// K and V into `kv` in the operand type, then the tensor-core kernel; `overflow_flags`: the
/// f16 kernels, flagging sequences there.
fn mma_attention(
    gpu: &Gpu,
    a: &KernelArgs,
    kv: &mut CudaViewMut<u16>,
    rows: usize,
    out: &mut CudaViewMut<f32>,
    overflow_flags: Option<u64>,
) -> Result<()> {
    let d = &a.dims;
    let kv_width = d.kv_heads * d.head_dim;
    let (flags_ptr, convert, attend) = match overflow_flags {
        None => (0u64, "attention_kv_bf16_kernel", "attention_mma_kernel"),
        Some(flags) => (flags, "attention_kv_f16_kernel", "attention_mma_f16_kernel"),
    };
    let (mut k16, mut v16) = kv.split_at_mut(rows * kv_width);
    let quads = (rows * kv_width / 4) as u64;
    let (kv_width_i, seq_i, sequences_i) = (kv_width as i32, d.seq_len as i32, d.sequences as i32);
    launch!(
        gpu,
        ATTENTION_MMA,
        convert,
        grid_for(quads as usize),
        a.k,
        a.v,
        &mut k16,
        &mut v16,
        &quads,
        &kv_width_i,
        &seq_i,
        &a.offsets_ptr,
        &sequences_i,
        &flags_ptr
    )?;
    // Two stages of K and V tiles where cp.async overlaps them (sm_80+), one on sm_75.
    let stages = if gpu.kernel_capability() >= (8, 0) {
        2
    } else {
        1
    };
    let shared_bytes = stages * 2 * MMA_KEYS * (d.head_dim + 8) * 2;
    if shared_bytes > DEFAULT_SHARED_BYTES {
        gpu.function(ATTENTION_MMA, attend)?.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            shared_bytes as i32,
        )?;
    }
    let config = LaunchConfig {
        grid_dim: (
            d.seq_len.div_ceil(MMA_ROWS_PER_BLOCK) as u32,
            d.heads as u32,
            d.sequences as u32,
        ),
        block_dim: (32 * (MMA_ROWS_PER_BLOCK / 16) as u32, 1, 1),
        shared_mem_bytes: shared_bytes as u32,
    };
    let (heads_i, kv_i, dim_i) = (d.heads as i32, d.kv_heads as i32, d.head_dim as i32);
    // K and V rows are copied 16 bytes at a time: the scratch starts aligned (offset 0), V at
    // rows * kv_width elements, and a head's row is a multiple of 32 bytes.
    launch!(
        gpu,
        ATTENTION_MMA,
        attend,
        config,
        a.q,
        &mut k16,
        &mut v16,
        out,
        &seq_i,
        &heads_i,
        &kv_i,
        &dim_i,
        &a.window,
        &d.scale,
        &a.learned_ptr,
        &a.sink_ptr,
        &a.want_sinks,
        &a.offsets_ptr,
        &flags_ptr
    )
}

/// The f32 kernel; `only_flagged`: (flags, totals) of the f16 guard, recomputing only the
/// flagged sequences.
fn f32_attention(
    gpu: &Gpu,
    a: &KernelArgs,
    out: &mut CudaViewMut<f32>,
    only_flagged: Option<(u64, u64)>,
) -> Result<()> {
    let d = &a.dims;
    // 32 keys per tile while the tiles fit in 48 KiB of shared memory, 16 beyond.
    let key_tile: usize = if d.head_dim <= 128 { 32 } else { 16 };
    let shared_floats =
        key_tile * (d.head_dim + 1) + key_tile * d.head_dim + QUERY_ROWS_PER_BLOCK * d.head_dim;
    let config = LaunchConfig {
        grid_dim: (
            d.seq_len.div_ceil(QUERY_ROWS_PER_BLOCK) as u32,
            d.heads as u32,
            d.sequences as u32,
        ),
        block_dim: (32 * QUERY_ROWS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: (shared_floats * 4) as u32,
    };
    let (seq_i, heads_i, kv_i, dim_i, tile_i) = (
        d.seq_len as i32,
        d.heads as i32,
        d.kv_heads as i32,
        d.head_dim as i32,
        key_tile as i32,
    );
    let (flags_ptr, totals_ptr) = only_flagged.unwrap_or((0, 0));
    launch!(
        gpu,
        ATTENTION,
        "attention_kernel",
        config,
        a.q,
        a.k,
        a.v,
        out,
        &seq_i,
        &heads_i,
        &kv_i,
        &dim_i,
        &tile_i,
        &a.window,
        &d.scale,
        &a.learned_ptr,
        &a.sink_ptr,
        &a.want_sinks,
        &a.offsets_ptr,
        &flags_ptr,
        &totals_ptr
    )
}

/// Per (sequence, head), `[sum over queries of p(key 0), of p(delimiter), of p(learned
/// sink)]` from a scratch the attention filled (`dims` and `ragged` as it was called with).
pub fn reduce_sink_mass(
    gpu: &Gpu,
    scratch: &mut CudaViewMut<f32>,
    dims: &AttentionDims,
    ragged: Option<RaggedRows>,
) -> Result<Vec<[f64; 3]>> {
    let query_rows = ragged.map_or(dims.sequences * dims.seq_len, |r| r.rows);
    check_len(
        "attention sinks",
        scratch,
        sink_scratch_len(dims, query_rows),
    )?;
    let mut _offsets_guard = None;
    let offsets_ptr = match ragged {
        None => 0,
        Some(ragged) => {
            check_len("attention offsets", ragged.offsets, dims.sequences + 1)?;
            let (pointer, guard) = ragged.offsets.device_ptr(&gpu.stream);
            _offsets_guard = Some(guard);
            pointer
        }
    };
    let rows = dims.sequences * dims.heads;
    let (rows_i, seq_i, heads_i) = (rows as i32, dims.seq_len as i32, dims.heads as i32);
    let config = LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (SINK_REDUCE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        gpu,
        ATTENTION,
        "sink_mass_reduce_kernel",
        config,
        &mut *scratch,
        &rows_i,
        &seq_i,
        &heads_i,
        &offsets_ptr
    )?;
    let tail = query_rows * dims.heads * SINK_VALUES;
    let sums = gpu
        .stream
        .clone_dtoh(&scratch.slice(tail..tail + 2 * SINK_VALUES * rows))?;
    Ok(sums
        .chunks_exact(2 * SINK_VALUES)
        .map(|s| std::array::from_fn(|i| s[2 * i] as f64 + s[2 * i + 1] as f64))
        .collect())
}

/// Threads per row of `sink_mass_reduce_kernel` (`SINK_REDUCE_THREADS`).
const SINK_REDUCE_THREADS: u32 = 256;
