//! The block ops (`block::BlockOps`) on the GPU: kernels and cuBLAS GEMMs on device views,
//! queued on the compute stream. The step order lives in `block/`; this file only says how
//! each op is launched here.

use super::capture::CudaCapture;
use super::delta_net;
use super::layer::DeltaScratch;
use super::linear::{HalfScratch, linear_converted};
use super::moe::{self, MoeBuffers, activate, kernel_activation};
use super::weights::{DeviceLayer, MatrixRows};
use crate::allocation::{Budget, Reservation};
use crate::arch::DeltaNetSpec;
use crate::arch::{Activation, MoeSpec, SharedExpertSpec, WeightRole};
use crate::block::{
    AttentionShape, BlockOps, Buf, BufferSet, DeltaRuleShape, GateActivation, Regroup,
};
use crate::capture::{CapturePoint, SinkMass};
use crate::error::{Result, RuntimeError};
use crate::sequences::Sequences;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use layerstream_kernels::ops::attention::{
    AttentionDims, F16Guard, MmaOperands, RaggedRows, SinkScratch, TensorCoreScratch,
    causal_attention, reduce_sink_mass, sink_scratch_len, tensor_core_kv_len,
};
use layerstream_kernels::ops::elementwise::GateKind;
use layerstream_kernels::ops::{elementwise, norm, rope};
use std::ops::Range;
use std::sync::Arc;

/// A micro-batch of sequences of their own lengths, on the device.
pub(crate) struct RaggedDevice<'a> {
    /// `(rows)`: each row's position in its sequence.
    pub positions: CudaView<'a, i32>,
    /// `(sequences + 1)`: the workload's row offsets of the micro-batch's sequences and the
    /// one after (kernels subtract the first).
    pub offsets: CudaView<'a, i32>,
}

/// For sequences of their own lengths: every row's position in its sequence and the row
/// offsets on the device, reserved against the budget.
pub(super) struct RaggedOnDevice {
    _reservation: Reservation,
    /// `(tokens)`.
    pub positions: CudaSlice<i32>,
    /// `(sequences + 1)`.
    pub offsets: CudaSlice<i32>,
}

/// The workload's [`RaggedOnDevice`] (`None` for packed data, whose kernels compute
/// positions and offsets from the one length).
pub(super) fn ragged_rows(
    gpu: &Gpu,
    sequences: &Sequences,
    budget: &Arc<Budget>,
) -> Result<Option<RaggedOnDevice>> {
    if sequences.uniform_len().is_some() {
        return Ok(None);
    }
    let bytes = 4 * (sequences.tokens() + sequences.count() + 1) as u64;
    let reservation = budget.reserve("the sequences' row positions and offsets", bytes)?;
    let positions: Vec<i32> = sequences.positions().iter().map(|&p| p as i32).collect();
    let offsets: Vec<i32> = sequences.offsets().iter().map(|&o| o as i32).collect();
    let positions = gpu.stream.clone_htod(&positions)?;
    let offsets = gpu.stream.clone_htod(&offsets)?;
    Ok(Some(RaggedOnDevice {
        _reservation: reservation,
        positions,
        offsets,
    }))
}

/// One micro-batch of one layer part on the GPU.
pub(crate) struct CudaOps<'a, 'v, 'c> {
    /// The GPU.
    pub gpu: &'a Gpu,
    /// The part's weights on the device.
    pub weights: &'a DeviceLayer,
    /// RoPE inverse frequencies, `(head_dim / 2)` or fewer (partial rotary).
    pub inv_freq: &'a CudaSlice<f32>,
    /// What RoPE's cos and sin are multiplied by (YaRN's attention factor, 1 otherwise).
    pub rope_scaling: f32,
    /// The micro-batch's buffers.
    pub buffers: BufferSet<CudaViewMut<'v, f32>>,
    /// 16-bit copies of GEMM inputs and the f16 overflow guard.
    pub half: &'a mut HalfScratch,
    /// The buffer, element count and 16-bit type (f16: `true`) whose copy `half` holds:
    /// consecutive GEMMs of one input (q, k and v; gate and up) convert it once (an f16 copy
    /// with its overflow guard), and the gated activation writes its bf16 copy for the down
    /// projection in the same pass. Every other op forgets it.
    pub half_holds: Option<(Buf, usize, bool)>,
    /// The MoE buffers, for models with MoE layers.
    pub moe: Option<&'a mut MoeBuffers>,
    /// The Gated DeltaNet's chunk buffers and state.
    pub delta: &'a mut DeltaScratch,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// The workload's longest sequence (what the DeltaNet chunk buffers are sized by).
    pub longest: usize,
    /// Sequences of their own lengths: the micro-batch's slice of the workload's row
    /// positions `(rows)` and offsets `(sequences + 1)` on the device; `None` for packed data.
    pub ragged: Option<RaggedDevice<'a>>,
    /// The spec and the tokens of the last `route`.
    pub routed: Option<(MoeSpec, usize)>,
    /// `None`: captures are not wanted.
    pub capture: Option<CudaCapture<'c>>,
}

fn no_moe_buffers() -> RuntimeError {
    RuntimeError::internal("a MoE layer without MoE buffers")
}

impl CudaOps<'_, '_, '_> {
    fn rows(&mut self, buffer: Buf, width: usize) -> usize {
        self.buffers.get(buffer).len() / width
    }
}

impl BlockOps for CudaOps<'_, '_, '_> {
    fn has(&self, role: WeightRole) -> bool {
        self.weights.has(role)
    }

    fn rms_norm(&mut self, input: Buf, weight: WeightRole, out: Buf, eps: f32) -> Result<()> {
        self.half_holds = None;
        let w = self.weights.vector(weight);
        let rows = self.rows(input, w.len());
        let ([input], out) = self.buffers.split([input], out);
        norm::rms_norm(self.gpu, &input.as_view(), &w.as_view(), out, rows, eps)?;
        Ok(())
    }

    fn rms_norm_in_place(&mut self, values: Buf, weight: WeightRole, eps: f32) -> Result<()> {
        self.half_holds = None;
        let w = self.weights.vector(weight);
        let rows = self.rows(values, w.len());
        let values = self.buffers.get(values);
        norm::rms_norm_in_place(self.gpu, values, &w.as_view(), rows, eps)?;
        Ok(())
    }

    fn linear(
        &mut self,
        input: Buf,
        weight: WeightRole,
        bias: Option<WeightRole>,
        out: Buf,
        in_features: usize,
        out_features: usize,
    ) -> Result<()> {
        let rows = self.rows(input, in_features);
        let n = rows * in_features;
        let bias = bias.and_then(|b| self.weights.maybe_vector(b));
        let w = self.weights.matrix(weight);
        let ([input_values], out_values) = self.buffers.split([input], out);
        if w.is_half() {
            let held = (input, n, w.is_f16());
            if self.half_holds != Some(held) {
                let shape = (rows, in_features);
                self.half
                    .convert(self.gpu, &input_values.as_view(), shape, &w)?;
                self.half_holds = Some(held);
            }
        } else if self.half_holds.is_some_and(|(held, _, _)| held == out) {
            self.half_holds = None;
        }
        let shape = (rows, in_features, out_features);
        let x = input_values.as_view();
        linear_converted(self.gpu, &x, &w, bias, out_values, shape, self.half)
    }

    fn clamp(&mut self, values: Buf, limit: f32) -> Result<()> {
        self.half_holds = None;
        elementwise::clamp(self.gpu, self.buffers.get(values), limit)?;
        Ok(())
    }

    fn rope(
        &mut self,
        values: Buf,
        heads: usize,
        head_dim: usize,
        batch: &Sequences,
    ) -> Result<()> {
        self.half_holds = None;
        let rows = self.rows(values, heads * head_dim);
        let values = self.buffers.get(values);
        let inv_freq = self.inv_freq.as_view();
        let positions = self.ragged.as_ref().map(|r| &r.positions);
        rope::rope(
            self.gpu,
            values,
            &inv_freq,
            rows,
            heads,
            head_dim,
            batch.longest(),
            self.rope_scaling,
            positions,
        )?;
        Ok(())
    }

    fn attention(&mut self, shape: AttentionShape<'_>, sinks: bool) -> Result<()> {
        self.half_holds = None;
        let dims = AttentionDims {
            sequences: shape.batch.count(),
            seq_len: shape.batch.longest(),
            heads: shape.heads,
            kv_heads: shape.kv_heads,
            head_dim: shape.head_dim,
            sliding_window: shape.sliding_window,
            scale: shape.scale,
            // The attention products in the GEMMs' 16-bit type (f32 compute stays f32).
            operands: match self.weights.matrix(WeightRole::QProj) {
                MatrixRows::Bf16(_) => MmaOperands::Bf16,
                MatrixRows::F16(_) => MmaOperands::F16,
                MatrixRows::F32(_) => MmaOperands::Off,
            },
        };
        let capture = self.capture.as_mut().filter(|_| sinks);
        let delimiters: Option<Vec<i32>> = capture.as_ref().map(|c| {
            let known = c.request.delimiters(c.first_sequence, shape.batch.count());
            known.iter().map(|d| d.map_or(-1, |d| d as i32)).collect()
        });
        // The sinks' scratch is SublayerOut (free until o_proj writes it).
        let BufferSet {
            q,
            k,
            v,
            attn,
            sublayer_out,
            ..
        } = &mut self.buffers;
        let scratch_len = sink_scratch_len(&dims, shape.batch.tokens());
        if delimiters.is_some() && scratch_len > sublayer_out.len() {
            return Err(RuntimeError::internal(format!(
                "the attention-sink scratch ({} floats) does not fit SublayerOut ({})",
                scratch_len,
                sublayer_out.len()
            )));
        }
        let scratch = delimiters.as_deref().map(|delimiters| SinkScratch {
            scratch: &mut *sublayer_out,
            delimiters,
        });
        let learned = self
            .weights
            .has(WeightRole::AttnSinks)
            .then(|| self.weights.vector(WeightRole::AttnSinks).as_view());
        let ragged = self.ragged.as_ref().map(|r| RaggedRows {
            offsets: &r.offsets,
            rows: shape.batch.tokens(),
        });
        // The tensor-core kernel's 16-bit K and V go in the GEMM inputs' scratch (free until
        // o_proj's input is converted).
        let mut scratch16 = match dims.uses_tensor_cores(self.gpu) {
            true => Some(self.half.attention(
                tensor_core_kv_len(&dims, shape.batch.tokens()),
                dims.operands == MmaOperands::F16,
            )?),
            false => None,
        };
        let tensor_cores = scratch16.as_mut().map(|(kv, f16_guard)| TensorCoreScratch {
            kv,
            guard: f16_guard
                .as_mut()
                .map(|(flags, totals)| F16Guard { flags, totals }),
        });
        causal_attention(
            self.gpu,
            &q.as_view(),
            &k.as_view(),
            &v.as_view(),
            attn,
            dims,
            learned.as_ref(),
            scratch,
            ragged,
            tensor_cores,
        )?;
        if let Some(c) = capture {
            let mass = SinkMass {
                heads: shape.heads,
                queries: shape.batch.lengths().collect(),
                learned: learned.is_some(),
                mass: reduce_sink_mass(self.gpu, sublayer_out, &dims, ragged)?,
            };
            c.observer
                .on_attention_sinks(c.layer, c.first_sequence, &mass);
        }
        Ok(())
    }

    fn gated_activation(&mut self, gate: Buf, up: Buf, activation: Activation) -> Result<()> {
        let weights = self.weights;
        let down = weights
            .has(WeightRole::DownProj)
            .then(|| weights.matrix(WeightRole::DownProj));
        let ([up_values], gate_values) = self.buffers.split([up], gate);
        let n = up_values.len();
        let kind = kernel_activation(activation);
        match down {
            Some(MatrixRows::Bf16(_)) => {
                let mut copy = self.half.first(n)?;
                elementwise::gated_activation_with_bf16(
                    self.gpu,
                    gate_values,
                    &up_values.as_view(),
                    &mut copy,
                    kind,
                )?;
                self.half_holds = Some((gate, n, false));
            }
            Some(MatrixRows::F16(w)) => {
                // The down projection's guarded f16 input in the same pass.
                let inter = w.len() / self.hidden_size.max(1);
                if inter == 0 || n % inter != 0 {
                    return Err(RuntimeError::internal(format!(
                        "a gated activation of {n} values for a down projection {inter} wide"
                    )));
                }
                let rows = n / inter;
                let (mut copy, mut guard) = self.half.f16_input(rows, inter)?;
                elementwise::gated_activation_f16_guarded(
                    self.gpu,
                    gate_values,
                    &up_values.as_view(),
                    &mut copy,
                    (rows, inter),
                    &mut guard,
                    kind,
                )?;
                self.half_holds = Some((gate, n, true));
            }
            _ => {
                self.half_holds = None;
                activate(self.gpu, gate_values, &up_values.as_view(), activation)?;
            }
        }
        Ok(())
    }

    fn add(&mut self, accumulator: Buf, addend: Buf) -> Result<()> {
        self.half_holds = None;
        let ([addend], accumulator) = self.buffers.split([addend], accumulator);
        elementwise::add(self.gpu, accumulator, &addend.as_view())?;
        Ok(())
    }

    fn route(&mut self, input: Buf, spec: &MoeSpec) -> Result<()> {
        self.half_holds = None;
        let (gpu, weights, hidden) = (self.gpu, self.weights, self.hidden_size);
        let tokens = self.rows(input, hidden);
        let buffers = self.moe.as_deref_mut().ok_or_else(no_moe_buffers)?;
        let x = self.buffers.get(input).as_view();
        moe::route(gpu, &x, weights, spec, hidden, buffers, self.half)?;
        self.routed = Some((spec.clone(), tokens));
        Ok(())
    }

    fn experts(
        &mut self,
        input: Buf,
        spec: &MoeSpec,
        experts: Range<usize>,
        activation: Activation,
        out: Buf,
    ) -> Result<()> {
        self.half_holds = None;
        let (gpu, weights, hidden) = (self.gpu, self.weights, self.hidden_size);
        let buffers = self.moe.as_deref_mut().ok_or_else(no_moe_buffers)?;
        let ([x], out) = self.buffers.split([input], out);
        moe::experts(
            gpu,
            &x.as_view(),
            weights,
            spec,
            hidden,
            experts,
            activation,
            out,
            buffers,
            self.half,
        )
    }

    fn shared_expert(
        &mut self,
        input: Buf,
        shared: SharedExpertSpec,
        activation: Activation,
        out: Buf,
    ) -> Result<()> {
        self.half_holds = None;
        let (gpu, weights, hidden) = (self.gpu, self.weights, self.hidden_size);
        let buffers = self.moe.as_deref_mut().ok_or_else(no_moe_buffers)?;
        let ([x], out) = self.buffers.split([input], out);
        moe::add_shared_expert(
            gpu,
            &x.as_view(),
            weights,
            shared,
            activation,
            hidden,
            out,
            buffers,
            self.half,
        )
    }

    fn regroup(&mut self, input: Buf, out: Buf, layout: &Regroup) -> Result<()> {
        self.half_holds = None;
        let ([input], out) = self.buffers.split([input], out);
        delta_net::regroup(self.gpu, &input.as_view(), out, layout)
    }

    fn gate_activation(&mut self, values: Buf, activation: GateActivation) -> Result<()> {
        self.half_holds = None;
        let kind = match activation {
            GateActivation::Sigmoid => GateKind::Sigmoid,
            GateActivation::Silu => GateKind::Silu,
        };
        elementwise::gate_activation(self.gpu, self.buffers.get(values), kind)?;
        Ok(())
    }

    fn multiply(&mut self, values: Buf, gate: Buf) -> Result<()> {
        self.half_holds = None;
        let ([gate], values) = self.buffers.split([gate], values);
        elementwise::multiply(self.gpu, values, &gate.as_view())?;
        Ok(())
    }

    fn causal_conv_silu(
        &mut self,
        input: Buf,
        out: Buf,
        delta: &DeltaNetSpec,
        batch: &Sequences,
    ) -> Result<()> {
        self.half_holds = None;
        let channels = delta.shapes(batch.longest()).conv_channels();
        let ([input], out) = self.buffers.split([input], out);
        let shape = (channels, delta.conv_kernel);
        delta_net::causal_conv_silu(self.gpu, self.weights, &input.as_view(), out, shape, batch)
    }

    fn delta_rule(&mut self, shape: DeltaRuleShape<'_>) -> Result<()> {
        self.half_holds = None;
        let reads = [Buf::Q, Buf::K, Buf::V, Buf::Beta, Buf::Decay];
        let (inputs, core) = self.buffers.split(reads, Buf::DeltaCore);
        let longest = self.longest;
        delta_net::delta_rule(
            self.gpu,
            self.weights,
            inputs,
            core,
            self.delta,
            shape,
            longest,
        )
    }

    fn gated_rms_norm(
        &mut self,
        values: Buf,
        gate: Buf,
        out: Buf,
        _head_width: usize,
        eps: f32,
    ) -> Result<()> {
        self.half_holds = None;
        let (inputs, out) = self.buffers.split([values, gate], out);
        delta_net::gated_rms_norm(self.gpu, self.weights, inputs, out, eps)
    }

    fn hand_over(&mut self, point: CapturePoint, values: Buf, width: usize) -> Result<()> {
        self.half_holds = None;
        match &mut self.capture {
            Some(capture) => capture.hand_over(point, &self.buffers.get(values).as_view(), width),
            None => Ok(()),
        }
    }

    fn accumulate(
        &mut self,
        point: CapturePoint,
        values: Buf,
        width: usize,
        threshold: f32,
    ) -> Result<()> {
        self.half_holds = None;
        match &mut self.capture {
            Some(capture) => {
                let values = self.buffers.get(values).as_view();
                capture.accumulate(point, &values, width, threshold)
            }
            None => Ok(()),
        }
    }

    fn hand_over_routing(&mut self) -> Result<()> {
        self.half_holds = None;
        let (spec, tokens) = self.routed.as_ref().ok_or_else(|| {
            RuntimeError::internal("the routing was captured before the router ran")
        })?;
        let buffers = self.moe.as_deref().ok_or_else(no_moe_buffers)?;
        let routing = buffers.routing(spec, *tokens);
        match &mut self.capture {
            Some(capture) => capture.routing(&routing),
            None => Ok(()),
        }
    }

    fn keep_moe_input(&mut self, values: Buf, width: usize) -> Result<()> {
        self.half_holds = None;
        match &mut self.capture {
            Some(capture) => capture.keep_moe_input(&self.buffers.get(values).as_view(), width),
            None => Ok(()),
        }
    }
}
