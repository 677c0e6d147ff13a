//! Final norm and LM head on the device, in vocabulary chunks; next-token NLL through an
//! online log-sum-exp kernel, so no `(rows, vocab)` buffer exists and only three numbers
//! per token come back to the host.

use super::ComputeDtype;
use super::linear::{Bf16Scratch, linear};
use super::weights::{DeviceMatrix, upload_matrix};
use crate::error::Result;
use crate::model::Model;
use crate::sequences::Sequences;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaView};
use layerstream_kernels::ops::{loss, norm};

/// The output head on the device.
pub struct DeviceHead {
    final_norm: CudaSlice<f32>, // (hidden)
    lm_head: DeviceMatrix,      // (vocab, hidden)
    vocab: usize,
    width: usize,
    eps: f32,
}

impl DeviceHead {
    /// Uploads the final norm and the LM head (the embedding when tied).
    pub fn upload(gpu: &Gpu, model: &Model, compute: ComputeDtype) -> Result<Self> {
        let lm_head = model.lm_head();
        Ok(DeviceHead {
            final_norm: gpu.stream.clone_htod(&model.final_norm()?)?,
            lm_head: upload_matrix(gpu, &model.weights, lm_head, compute)?,
            vocab: lm_head.shape[0],
            width: lm_head.shape[1],
            eps: model.spec.block.norm_eps,
        })
    }

    /// Normalises `hidden (rows, width)` and calls `visit(first_vocab, logits (rows, n), n)`
    /// per vocabulary chunk.
    fn for_each_chunk(
        &self,
        gpu: &Gpu,
        hidden: &CudaView<f32>,
        rows: usize,
        scratch: &mut Bf16Scratch,
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
        let chunk = ((64usize << 20) / rows.max(1))
            .clamp(256, self.vocab.max(1))
            .min(self.vocab);
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
            visit(first, &logits, n)?;
        }
        Ok(())
    }

    /// Full logits `(rows, vocab)` on the host (small vocabularies, tests).
    pub fn logits(
        &self,
        gpu: &Gpu,
        hidden: &CudaView<f32>,
        rows: usize,
        scratch: &mut Bf16Scratch,
    ) -> Result<Vec<f32>> {
        let vocab = self.vocab;
        let mut all = vec![0f32; rows * vocab];
        self.for_each_chunk(gpu, hidden, rows, scratch, |first, logits, n| {
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
        scratch: &mut Bf16Scratch,
    ) -> Result<Vec<f32>> {
        let rows = token_ids.len();
        // The last row of each sequence predicts nothing.
        let mut targets: Vec<u32> = (0..rows)
            .map(|r| token_ids.get(r + 1).copied().unwrap_or(u32::MAX))
            .collect();
        for span in batch.spans() {
            targets[span.end - 1] = u32::MAX;
        }
        let upload = |v: &[f32]| gpu.stream.clone_htod(v);
        let targets_device = gpu.stream.clone_htod(&targets)?;
        let mut running_max = upload(&vec![f32::NEG_INFINITY; rows])?;
        let mut running_sum = upload(&vec![0f32; rows])?;
        let mut target_logit = upload(&vec![0f32; rows])?;
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
        let download = |s: &CudaSlice<f32>| gpu.stream.clone_dtoh(s);
        let (max, sum, target) = (
            download(&running_max)?,
            download(&running_sum)?,
            download(&target_logit)?,
        );
        let mut nll = Vec::with_capacity(rows);
        for r in (0..rows).filter(|&r| targets[r] != u32::MAX) {
            nll.push(((max[r] as f64 + (sum[r] as f64).ln()) - target[r] as f64) as f32);
        }
        Ok(nll)
    }
}
