//! Final norm and LM head on the device (uploaded whole or by vocabulary rows, in the GEMM
//! dtype), in vocabulary chunks; next-token NLL through an
//! online log-sum-exp kernel, so no `(rows, vocab)` buffer exists and only three numbers
//! per token come back to the host.

use super::ComputeDtype;
use super::linear::{HalfScratch, linear};
use super::weights::DeviceMatrix;
use crate::error::{Result, RuntimeError};
use crate::model::Model;
use crate::sequences::Sequences;
use crate::weights::WeightStore;
use crate::weights::dtype::convert_to_f32;
use half::bf16;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaView};
use layerstream_kernels::ops::{loss, norm};
use layerstream_planner::memory::head_logits_chunk;
use layerstream_planner::{TensorDtype, TensorEntry};

/// The output head on the device: all of it, or a range of its vocabulary rows (a head
/// split because it does not fit next to the micro-batch).
pub struct DeviceHead {
    final_norm: CudaSlice<f32>, // (hidden)
    lm_head: DeviceMatrix,      // (vocab rows held, hidden)
    /// Vocabulary rows held.
    vocab: usize,
    /// The first of them in the vocabulary.
    first_row: usize,
    width: usize,
    eps: f32,
}

/// The running log-sum-exp of rows over the vocabulary chunks seen so far, and each row's
/// target logit, on the host (`(rows)` each; carried across the parts of a split head).
pub struct RunningLogSumExp {
    /// Largest logit so far.
    pub max: Vec<f32>,
    /// Sum of `exp(logit - max)` so far.
    pub sum: Vec<f32>,
    /// The target token's logit, once its chunk was seen.
    pub target: Vec<f32>,
}

impl RunningLogSumExp {
    /// Nothing seen yet, for `rows` rows.
    pub fn new(rows: usize) -> Self {
        RunningLogSumExp {
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            target: vec![0.0; rows],
        }
    }

    /// `log(sum(exp(logits)))` of row `r`.
    pub fn log_norm(&self, r: usize) -> f64 {
        self.max[r] as f64 + (self.sum[r] as f64).ln()
    }
}

/// The targets of `token_ids` of `batch`'s sequences: the next token, or `u32::MAX` for each
/// sequence's last row (it predicts nothing).
pub fn next_tokens(token_ids: &[u32], batch: &Sequences) -> Vec<u32> {
    let mut targets: Vec<u32> = (0..token_ids.len())
        .map(|r| token_ids.get(r + 1).copied().unwrap_or(u32::MAX))
        .collect();
    for span in batch.spans() {
        targets[span.end - 1] = u32::MAX;
    }
    targets
}

impl DeviceHead {
    /// Uploads the final norm and the LM head (the embedding when tied).
    pub fn upload(gpu: &Gpu, model: &Model, compute: ComputeDtype) -> Result<Self> {
        Self::upload_rows(gpu, model, compute, 0..model.lm_head().shape[0])
    }

    /// Uploads the final norm and vocabulary rows `rows` of the LM head.
    pub fn upload_rows(
        gpu: &Gpu,
        model: &Model,
        compute: ComputeDtype,
        rows: std::ops::Range<usize>,
    ) -> Result<Self> {
        let lm_head = model.lm_head();
        Ok(DeviceHead {
            final_norm: gpu.stream.clone_htod(&model.final_norm()?)?,
            lm_head: upload_matrix_rows(gpu, &model.weights, lm_head, compute, rows.clone())?,
            vocab: rows.len(),
            first_row: rows.start,
            width: lm_head.shape[1],
            eps: model.spec.block.norm_eps,
        })
    }

    /// Normalises `hidden (rows, width)` and calls `visit(first_vocab, logits (rows, n), n)`
    /// per vocabulary chunk of the rows held (`first_vocab` in the whole vocabulary).
    fn for_each_chunk(
        &self,
        gpu: &Gpu,
        hidden: &CudaView<f32>,
        rows: usize,
        scratch: &mut HalfScratch,
        mut visit: impl FnMut(usize, &CudaSlice<f32>, usize) -> Result<()>,
    ) -> Result<()> {
        let alloc = |n: usize| gpu.stream.alloc_zeros::<f32>(n.max(1));
        let mut normed = alloc(rows * self.width)?; // (rows, hidden)
        norm::rms_norm(
            gpu,
            hidden,
            &self.final_norm.as_view(),
            &mut normed.as_view_mut(),
            rows,
            self.eps,
        )?;
        let chunk = head_logits_chunk(rows, self.vocab);
        let mut logits = alloc(rows * chunk)?; // (rows, chunk)
        for first in (0..self.vocab).step_by(chunk) {
            let n = chunk.min(self.vocab - first);
            let mut out = logits.slice_mut(..rows * n);
            let rows_of_w = self.lm_head.rows(first, n, self.width);
            linear(
                gpu,
                &normed.as_view(),
                &rows_of_w,
                None,
                &mut out,
                rows,
                self.width,
                n,
                scratch,
            )?;
            visit(self.first_row + first, &logits, n)?;
        }
        Ok(())
    }

    /// Logits `(rows, vocabulary rows held)` on the host (small vocabularies, tests, top-k).
    pub fn logits(
        &self,
        gpu: &Gpu,
        hidden: &CudaView<f32>,
        rows: usize,
        scratch: &mut HalfScratch,
    ) -> Result<Vec<f32>> {
        let vocab = self.vocab;
        let mut all = vec![0f32; rows * vocab];
        self.for_each_chunk(gpu, hidden, rows, scratch, |first, logits, n| {
            let first = first - self.first_row;
            let chunk = gpu.stream.clone_dtoh(&logits.slice(..rows * n))?;
            for r in 0..rows {
                all[r * vocab + first..r * vocab + first + n]
                    .copy_from_slice(&chunk[r * n..(r + 1) * n]);
            }
            Ok(())
        })?;
        Ok(all)
    }

    /// Next-token NLL for `token_ids (rows)` of the sequences of `batch`: each sequence's
    /// `len - 1` values, back to back.
    pub fn next_token_nll(
        &self,
        gpu: &Gpu,
        hidden: &CudaView<f32>,
        token_ids: &[u32],
        batch: &Sequences,
        scratch: &mut HalfScratch,
    ) -> Result<Vec<f32>> {
        let targets = next_tokens(token_ids, batch);
        let mut running = RunningLogSumExp::new(token_ids.len());
        self.update_running(gpu, hidden, &targets, &mut running, scratch)?;
        Ok(nll_of(&targets, &running))
    }

    /// Folds the vocabulary rows held into `running` for `hidden (rows, width)` and their
    /// `targets` (`u32::MAX`: none).
    pub fn update_running(
        &self,
        gpu: &Gpu,
        hidden: &CudaView<f32>,
        targets: &[u32],
        running: &mut RunningLogSumExp,
        scratch: &mut HalfScratch,
    ) -> Result<()> {
        let rows = targets.len();
        let targets_device = gpu.stream.clone_htod(targets)?;
        let mut running_max = gpu.stream.clone_htod(&running.max)?;
        let mut running_sum = gpu.stream.clone_htod(&running.sum)?;
        let mut target_logit = gpu.stream.clone_htod(&running.target)?;
        self.for_each_chunk(gpu, hidden, rows, scratch, |first, logits, n| {
            loss::logsumexp_update(
                gpu,
                &logits.slice(..rows * n),
                rows,
                n,
                first,
                &targets_device.as_view(),
                &mut running_max.as_view_mut(),
                &mut running_sum.as_view_mut(),
                &mut target_logit.as_view_mut(),
            )?;
            Ok(())
        })?;
        running.max = gpu.stream.clone_dtoh(&running_max)?;
        running.sum = gpu.stream.clone_dtoh(&running_sum)?;
        running.target = gpu.stream.clone_dtoh(&target_logit)?;
        Ok(())
    }
}

/// The NLL of every row with a target, from its running log-sum-exp.
pub fn nll_of(targets: &[u32], running: &RunningLogSumExp) -> Vec<f32> {
    (0..targets.len())
        .filter(|&r| targets[r] != u32::MAX)
        .map(|r| (running.log_norm(r) - running.target[r] as f64) as f32)
        .collect()
}

/// Uploads rows `rows` of a matrix in the GEMM dtype (a part of a split output head).
pub fn upload_matrix_rows(
    gpu: &Gpu,
    store: &WeightStore,
    entry: &TensorEntry,
    compute: ComputeDtype,
    rows: std::ops::Range<usize>,
) -> Result<DeviceMatrix> {
    let width: usize = entry.shape[1..].iter().product();
    let bytes = store.bytes(entry);
    let bytes = match (
        rows.start,
        rows.end == entry.shape[0],
        entry.dtype.size_bytes(),
    ) {
        (0, true, _) => bytes,
        (_, _, Some(size)) => &bytes[rows.start * width * size..rows.end * width * size],
        (_, _, None) => {
            return Err(RuntimeError::InvalidRequest(format!(
                "{}: the output head is stored as {:?}; it can be split by vocabulary rows only in f32, f16 or bf16",
                entry.name, entry.dtype
            )));
        }
    };
    let numel = rows.len() * width;
    Ok(match (compute, entry.dtype) {
        (ComputeDtype::Bf16, TensorDtype::Bf16) => {
            let bits: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            DeviceMatrix::Bf16(gpu.stream.clone_htod(&bits)?)
        }
        (ComputeDtype::Bf16, _) => {
            let mut values = vec![0f32; numel];
            convert_to_f32(entry.dtype, bytes, &mut values);
            let bits: Vec<u16> = values
                .iter()
                .map(|&v| bf16::from_f32(v).to_bits())
                .collect();
            DeviceMatrix::Bf16(gpu.stream.clone_htod(&bits)?)
        }
        (ComputeDtype::F32, _) => {
            let mut values = vec![0f32; numel];
            convert_to_f32(entry.dtype, bytes, &mut values);
            DeviceMatrix::F32(gpu.stream.clone_htod(&values)?)
        }
        (ComputeDtype::F16, _) => {
            let mut values = vec![0f32; numel];
            convert_to_f32(entry.dtype, bytes, &mut values);
            let bits = f16_bits(&values).map_err(|at| {
                RuntimeError::InvalidRequest(format!(
                    "{}: value {} (element {at}) is beyond f16's range (65504); run with --compute-dtype f32{}",
                    entry.name,
                    values[at],
                    if entry.dtype == TensorDtype::Bf16 { " or bf16" } else { "" }
                ))
            })?;
            DeviceMatrix::F16(gpu.stream.clone_htod(&bits)?)
        }
    })
}

/// f16 bit patterns of `values`, or the index of the first finite value beyond f16's range.
fn f16_bits(values: &[f32]) -> std::result::Result<Vec<u16>, usize> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let h = half::f16::from_f32(v);
            match h.is_infinite() && v.is_finite() {
                true => Err(i),
                false => Ok(h.to_bits()),
            }
        })
        .collect()
}
