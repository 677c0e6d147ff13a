//! The gated MLP: `down(silu(gate(x)) * up(x))`.

use super::linear::linear;
use crate::arch::Activation;

/// `gate = act(gate) * up`, elementwise.
pub fn activate_in_place(gate: &mut [f32], up: &[f32], activation: Activation) {
    match activation {
        Activation::Silu => silu_mul_in_place(gate, up),
        Activation::ClampedSwiglu { limit, alpha } => {
            clamped_swiglu_in_place(gate, up, limit, alpha)
        }
    }
}

/// GPT-OSS's `(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)` with
/// `g = min(gate, limit)`, elementwise, into `gate`.
pub fn clamped_swiglu_in_place(gate: &mut [f32], up: &[f32], limit: f32, alpha: f32) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = g.min(limit);
        let glu = x / (1.0 + (-x * alpha).exp());
        *g = (u.clamp(-limit, limit) + 1.0) * glu;
    }
}

/// `silu(gate) * up`, elementwise, into `gate`.
pub fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Weights of one gated MLP.
pub struct GatedMlpWeights<'a> {
    /// `(intermediate, hidden)`.
    pub gate: &'a [f32],
    /// `(intermediate)`, if the model has MLP biases.
    pub gate_bias: Option<&'a [f32]>,
    /// `(intermediate, hidden)`.
    pub up: &'a [f32],
    /// `(intermediate)`.
    pub up_bias: Option<&'a [f32]>,
    /// `(hidden, intermediate)`.
    pub down: &'a [f32],
    /// `(hidden)`.
    pub down_bias: Option<&'a [f32]>,
}

/// Runs the MLP on `input (rows, hidden)` into `output (rows, hidden)`, using the two
/// `(rows, intermediate)` scratch buffers.
#[allow(clippy::too_many_arguments)]
pub fn gated_mlp(
    input: &[f32], // (rows, hidden)
    weights: &GatedMlpWeights,
    gate_scratch: &mut [f32], // (rows, intermediate)
    up_scratch: &mut [f32],   // (rows, intermediate)
    output: &mut [f32],       // (rows, hidden)
    hidden: usize,
    intermediate: usize,
    activation: Activation,
    threads: usize,
) {
    linear(
        input,
        weights.gate,
        weights.gate_bias,
        gate_scratch,
        hidden,
        intermediate,
        threads,
    );
    linear(
        input,
        weights.up,
        weights.up_bias,
        up_scratch,
        hidden,
        intermediate,
        threads,
    );
    activate_in_place(gate_scratch, up_scratch, activation);
    linear(
        gate_scratch,
        weights.down,
        weights.down_bias,
        output,
        intermediate,
        hidden,
        threads,
    );
}

#[cfg(test)]
mod tests {
    /// GPT-OSS's activation at and beyond its clamps: `min(gate, 7)`, `clamp(up, -7, 7)`,
    /// `(up + 1) * gate * sigmoid(1.702 gate)`.
    #[test]
    fn clamped_swiglu_clamps_gate_above_and_up_both_ways() {
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let cases = [
            (1.0f32, 2.0f32),
            (9.0, 0.5),
            (-9.0, 20.0),
            (7.0, -30.0),
            (0.0, 3.0),
        ];
        let mut gate: Vec<f32> = cases.iter().map(|c| c.0).collect();
        let up: Vec<f32> = cases.iter().map(|c| c.1).collect();
        clamped_swiglu_in_place(&mut gate, &up, 7.0, 1.702);
        for (got, (g, u)) in gate.iter().zip(cases) {
            let x = g.min(7.0);
            let expect = (u.clamp(-7.0, 7.0) + 1.0) * x * sigmoid(1.702 * x);
            assert!(
                (got - expect).abs() <= 1e-6 * expect.abs().max(1.0),
                "{g} {u}: {got}"
            );
        }
        // gate has no lower clamp: a very negative gate still gives ~0, not a clamped value.
        assert!(gate[2].abs() < 1e-4);
    }

    use super::*;

    #[test]
    fn silu_matches_definition() {
        let mut gate = vec![-3.0f32, 0.0, 0.5, 4.0];
        let up = vec![2.0f32, 1.0, -1.0, 0.25];
        let expect: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| (g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64) as f32)
            .collect();
        silu_mul_in_place(&mut gate, &up);
        for (g, e) in gate.iter().zip(expect) {
            assert!((g - e).abs() < 1e-6);
        }
    }
}
