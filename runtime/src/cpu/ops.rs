//! The block ops (`block::BlockOps`) on the CPU: plain f32 functions on host slices. The
//! step order lives in `block/`; this file only says how each op is computed here.

use super::attention::{AttentionExtras, causal_attention};
use super::delta_net;
use super::layer::LayerWeights;
use super::linear::linear;
use super::mlp::activate_in_place;
use super::moe::{MoeScratch, add_shared_expert, run_experts};
use super::norm::{rms_norm, rms_norm_rows_in_place};
use super::rope::RopeTable;
use super::router::route_tokens;
use crate::analysis::PointStatistics;
use crate::arch::DeltaNetSpec;
use crate::arch::{Activation, MoeSpec, SharedExpertSpec, WeightRole};
use crate::block::{
    AttentionShape, BlockOps, Buf, BufferSet, DeltaRuleShape, GateActivation, Regroup,
};
use crate::capture::{CapturePoint, Routing, SinkMass};
use crate::error::{Result, RuntimeError};
use crate::executor::{RunObserver, RunRequest};
use crate::sequences::Sequences;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ops::Range;

/// Where one micro-batch's captures go on the CPU.
pub(crate) struct CpuCapture<'a> {
    /// The run's observer.
    pub observer: &'a mut dyn RunObserver,
    /// The request (workload shape).
    pub request: &'a RunRequest,
    /// The layer.
    pub layer: usize,
    /// The micro-batch's first sequence in the workload.
    pub first_sequence: usize,
    /// The micro-batch's sequences, offsets from 0.
    pub spans: &'a Sequences,
    /// The layer's statistics so far, per point.
    pub statistics: &'a mut BTreeMap<CapturePoint, PointStatistics>,
}

/// One micro-batch of one layer part on the CPU.
pub(crate) struct CpuOps<'a, 'c> {
    /// The part's weights in f32.
    pub weights: &'a LayerWeights,
    /// cos/sin per position.
    pub rope: &'a RopeTable,
    /// The micro-batch's buffers.
    pub buffers: BufferSet<&'a mut [f32]>,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Worker threads per op.
    pub threads: usize,
    /// The MoE buffers (layers with experts).
    pub moe: Option<&'a mut MoeScratch>,
    /// `(sequences, value heads, key_dim, value_dim)`: DeltaNet's recurrent states (empty
    /// for other layers).
    pub delta_state: &'a mut [f32],
    /// The last `route`'s decisions.
    pub routing: Option<Routing>,
    /// `None`: captures are not wanted (a block run alone).
    pub capture: Option<CpuCapture<'c>>,
}

fn no_moe_buffers() -> RuntimeError {
    RuntimeError::internal("a MoE layer without MoE buffers")
}

fn not_routed() -> RuntimeError {
    RuntimeError::internal("the MoE block used its routing before the router ran")
}

impl BlockOps for CpuOps<'_, '_> {
    fn has(&self, role: WeightRole) -> bool {
        self.weights.maybe(role).is_some()
    }

    fn rms_norm(&mut self, input: Buf, weight: WeightRole, out: Buf, eps: f32) -> Result<()> {
        let ([input], out) = self.buffers.split([input], out);
        rms_norm(input, self.weights.get(weight), eps, out, self.threads);
        Ok(())
    }

    fn rms_norm_in_place(&mut self, values: Buf, weight: WeightRole, eps: f32) -> Result<()> {
        rms_norm_rows_in_place(self.buffers.get(values), self.weights.get(weight), eps);
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
        let ([input], out) = self.buffers.split([input], out);
        // `out` may be longer: DeltaNet's Projected holds in_proj_qkvz, then in_proj_ba.
        let out = &mut out[..input.len() / in_features * out_features];
        let bias = bias.and_then(|b| self.weights.maybe(b));
        let weight = self.weights.get(weight);
        linear(
            input,
            weight,
            bias,
            out,
            in_features,
            out_features,
            self.threads,
        );
        Ok(())
    }

    fn clamp(&mut self, values: Buf, limit: f32) -> Result<()> {
        let values = self.buffers.get(values);
        values.iter_mut().for_each(|x| *x = x.clamp(-limit, limit));
        Ok(())
    }

    fn rope(
        &mut self,
        values: Buf,
        heads: usize,
        head_dim: usize,
        batch: &Sequences,
    ) -> Result<()> {
        let values = self.buffers.get(values);
        self.rope.apply(values, heads, head_dim, batch);
        Ok(())
    }

    fn attention(&mut self, shape: AttentionShape<'_>, sinks: bool) -> Result<()> {
        let ([q, k, v], out) = self.buffers.split([Buf::Q, Buf::K, Buf::V], Buf::Attn);
        let capture = self.capture.as_mut().filter(|_| sinks);
        let delimiters = capture
            .as_ref()
            .map(|c| c.request.delimiters(c.first_sequence, shape.batch.count()));
        let learned_sinks = self.weights.maybe(WeightRole::AttnSinks);
        let extras = AttentionExtras {
            learned_sinks,
            delimiters: delimiters.as_deref(),
        };
        let mass = causal_attention(q, k, v, out, shape, self.threads, extras);
        if let Some(c) = capture {
            let mass = SinkMass {
                heads: shape.heads,
                queries: shape.batch.lengths().collect(),
                learned: learned_sinks.is_some(),
                mass,
            };
            c.observer
                .on_attention_sinks(c.layer, c.first_sequence, &mass);
        }
        Ok(())
    }

    fn gated_activation(&mut self, gate: Buf, up: Buf, activation: Activation) -> Result<()> {
        let ([up], gate) = self.buffers.split([up], gate);
        activate_in_place(gate, up, activation);
        Ok(())
    }

    fn add(&mut self, accumulator: Buf, addend: Buf) -> Result<()> {
        let ([addend], accumulator) = self.buffers.split([addend], accumulator);
        accumulator
            .iter_mut()
            .zip(addend.iter())
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn route(&mut self, input: Buf, moe: &MoeSpec) -> Result<()> {
        let input = self.buffers.get(input);
        let buffers = self.moe.as_deref_mut().ok_or_else(no_moe_buffers)?;
        let routing = route_tokens(input, self.weights, &mut buffers.logits, moe, self.threads);
        self.routing = Some(routing);
        Ok(())
    }

    fn experts(
        &mut self,
        input: Buf,
        moe: &MoeSpec,
        experts: Range<usize>,
        activation: Activation,
        out: Buf,
    ) -> Result<()> {
        let routing = self.routing.take();
        let ([input], out) = self.buffers.split([input], out);
        let chosen = routing.as_ref().ok_or_else(not_routed)?;
        let buffers = self.moe.as_deref_mut().ok_or_else(no_moe_buffers)?;
        run_experts(
            input,
            self.weights,
            moe,
            chosen,
            experts,
            activation,
            out,
            buffers,
            self.threads,
        );
        self.routing = routing;
        Ok(())
    }

    fn shared_expert(
        &mut self,
        input: Buf,
        shared: SharedExpertSpec,
        activation: Activation,
        out: Buf,
    ) -> Result<()> {
        let ([input], out) = self.buffers.split([input], out);
        let buffers = self.moe.as_deref_mut().ok_or_else(no_moe_buffers)?;
        let shared_buffers = buffers.shared.as_mut().ok_or_else(no_moe_buffers)?;
        add_shared_expert(
            input,
            self.weights,
            shared,
            activation,
            self.hidden_size,
            out,
            shared_buffers,
            self.threads,
        );
        Ok(())
    }

    fn regroup(&mut self, input: Buf, out: Buf, layout: &Regroup) -> Result<()> {
        let ([input], out) = self.buffers.split([input], out);
        delta_net::regroup(input, out, layout);
        Ok(())
    }

    fn gate_activation(&mut self, values: Buf, activation: GateActivation) -> Result<()> {
        let f = match activation {
            GateActivation::Sigmoid => delta_net::sigmoid,
            GateActivation::Silu => delta_net::silu,
        };
        self.buffers.get(values).iter_mut().for_each(|x| *x = f(*x));
        Ok(())
    }

    fn multiply(&mut self, values: Buf, gate: Buf) -> Result<()> {
        let ([gate], values) = self.buffers.split([gate], values);
        values
            .iter_mut()
            .zip(gate.iter())
            .for_each(|(v, g)| *v *= g);
        Ok(())
    }

    fn causal_conv_silu(
        &mut self,
        input: Buf,
        out: Buf,
        delta: &DeltaNetSpec,
        batch: &Sequences,
    ) -> Result<()> {
        let ([input], out) = self.buffers.split([input], out);
        let weight = self.weights.get(WeightRole::DeltaConv);
        let channels = delta.shapes(batch.longest()).conv_channels();
        let rows = input.len() / channels;
        let out = &mut out[..rows * channels];
        delta_net::causal_conv_silu(input, weight, out, delta.conv_kernel, batch);
        Ok(())
    }

    fn delta_rule(&mut self, shape: DeltaRuleShape<'_>) -> Result<()> {
        let reads = [Buf::Q, Buf::K, Buf::V, Buf::Beta, Buf::Decay];
        let ([q, k, v, b, a], out) = self.buffers.split(reads, Buf::DeltaCore);
        let inputs = delta_net::DeltaInputs {
            q,
            k,
            v,
            b,
            a,
            a_log: self.weights.get(WeightRole::DeltaALog),
            dt_bias: self.weights.get(WeightRole::DeltaDtBias),
        };
        delta_net::delta_rule(
            &inputs,
            &shape.delta,
            shape.batch,
            self.delta_state,
            out,
            self.threads,
        );
        Ok(())
    }

    fn gated_rms_norm(
        &mut self,
        values: Buf,
        gate: Buf,
        out: Buf,
        head_width: usize,
        eps: f32,
    ) -> Result<()> {
        let ([values, gate], out) = self.buffers.split([values, gate], out);
        let weight = self.weights.get(WeightRole::DeltaNorm);
        debug_assert_eq!(weight.len(), head_width);
        delta_net::gated_rms_norm(values, weight, gate, eps, out, self.threads);
        Ok(())
    }

    fn hand_over(&mut self, point: CapturePoint, values: Buf, width: usize) -> Result<()> {
        if let Some(c) = &mut self.capture {
            let values = self.buffers.get(values);
            c.observer
                .on_capture(c.layer, point, c.first_sequence, values, width);
        }
        Ok(())
    }

    fn accumulate(
        &mut self,
        point: CapturePoint,
        values: Buf,
        width: usize,
        threshold: f32,
    ) -> Result<()> {
        let Some(c) = &mut self.capture else {
            return Ok(());
        };
        let rows = &c.request.sequences;
        c.statistics
            .entry(point)
            .or_insert_with(|| {
                PointStatistics::of_rows(rows.clone(), point.statistics_shape(width), threshold)
            })
            .accumulate(self.buffers.get(values), c.first_sequence);
        Ok(())
    }

    fn hand_over_routing(&mut self) -> Result<()> {
        let routing = self.routing.as_ref().ok_or_else(not_routed)?;
        if let Some(c) = &mut self.capture {
            c.observer.on_router(c.layer, c.first_sequence, routing);
        }
        Ok(())
    }

    fn keep_moe_input(&mut self, values: Buf, width: usize) -> Result<()> {
        let Some(c) = &mut self.capture else {
            return Ok(());
        };
        if let Some(massive) = c
            .statistics
            .get_mut(&CapturePoint::ResidPost)
            .and_then(|s| s.massive.as_mut())
        {
            let values = self.buffers.get(values);
            let rows = |r: usize| Ok::<_, Infallible>(values[r * width..(r + 1) * width].to_vec());
            let Ok(()) = massive.keep_inputs(c.first_sequence, c.spans, rows);
        }
        Ok(())
    }
}
