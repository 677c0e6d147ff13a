//! Issue 14: the attention-sink mass the attention op sums (per layer, sequence and query
//! head: the probability on position 0 and on the sequence's first delimiter, summed over
//! queries) against the probabilities computed directly from the captured queries and keys
//! (`q`, `k`: after norms and RoPE) in f64: softmax(q k^T / sqrt(d)) with the causal mask and
//! the layer's sliding window. Fixtures: llama3 (causal, grouped-query), mistral (sliding
//! window 8 over 32 tokens: later queries see neither key), qwen2 (one full layer, then
//! windows of 12), llama2 (one kv head per query head).

use layerstream_planner::memory::HiddenPlacement;
use layerstream_runtime::CaptureMode;
use layerstream_runtime::Sequences;
use layerstream_runtime::backend::Backend;
use layerstream_runtime::cpu::CpuBackend;
use layerstream_runtime::{CapturePoint, FinalStage, Model, RunRequest, run};
use layerstream_tests::{KeepEverything, Reference, fixture_model};
use std::collections::BTreeMap;

/// Per (sequence, head): the sums over queries of p(position 0) and p(delimiter).
fn direct_mass(
    q: &[f32],
    k: &[f32],
    spec: &layerstream_runtime::arch::ModelSpec,
    layer: usize,
    (sequences, seq_len): (usize, usize),
    delimiters: &[Option<usize>],
) -> Vec<[f64; 2]> {
    let (heads, kv_heads, d) = (spec.num_heads, spec.num_kv_heads, spec.head_dim);
    let window = spec.sliding_windows[layer];
    let scale = (d as f64).powf(-0.5);
    let mut mass = Vec::new();
    for (s, delimiter) in delimiters.iter().enumerate().take(sequences) {
        for h in 0..heads {
            let kv = h / (heads / kv_heads);
            let mut sums = [0f64; 2];
            for p in 0..seq_len {
                let lowest = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let score = |j: usize| -> f64 {
                    let qi = (s * seq_len + p) * heads * d + h * d;
                    let kj = (s * seq_len + j) * kv_heads * d + kv * d;
                    (0..d)
                        .map(|i| q[qi + i] as f64 * k[kj + i] as f64)
                        .sum::<f64>()
                        * scale
                };
                let scores: Vec<f64> = (lowest..=p).map(score).collect();
                let max = scores.iter().copied().fold(f64::MIN, f64::max);
                let total: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                let probability = |j: usize| match (lowest..=p).contains(&j) {
                    true => (scores[j - lowest] - max).exp() / total,
                    false => 0.0,
                };
                sums[0] += probability(0);
                sums[1] += delimiter.map_or(0.0, probability);
            }
            mass.push(sums);
        }
    }
    mass
}

#[test]
fn sink_mass_equals_the_probabilities_from_captured_queries_and_keys() {
    for name in ["llama3", "mistral", "qwen2", "llama2"] {
        let reference = Reference::load(name);
        let model = Model::open(&fixture_model(name)).unwrap();
        let (sequences, seq_len) = (reference.num_sequences, reference.seq_len);
        let delimiters = vec![Some(5), Some(20)];
        assert_eq!(sequences, delimiters.len());
        let layers = model.spec.num_layers;
        for micro_batch in [1, 2] {
            let request = RunRequest {
                token_ids: reference.input_ids.clone(),
                first_delimiters: delimiters.clone(),
                sequences: Sequences::uniform(sequences, seq_len),
                capture_layers: (0..layers).collect(),
                capture_points: vec![CapturePoint::Q, CapturePoint::K, CapturePoint::AttnSinks],
                capture_mode: CaptureMode::Activations,
                final_stage: FinalStage::None,
                top_logprobs: None,
                head_vocab_rows: None,
                micro_batch_tokens: micro_batch * seq_len,
                start: None,
                checkpoint_hidden_states: false,
                hidden_placement: HiddenPlacement::Device,
                spill_dir: None,
                memory_budget: None,
                split_layers: BTreeMap::new(),
            };
            let mut kept = KeepEverything::default();
            let cpu = Backend::Cpu(CpuBackend::new(Some(2)));
            run(&model, &request, &cpu, &mut kept).unwrap();
            let mut windowed = 0;
            for layer in 0..layers {
                let q = &kept.captures[&CapturePoint::Q.full_name(layer)];
                let k = &kept.captures[&CapturePoint::K.full_name(layer)];
                let expect =
                    direct_mass(q, k, &model.spec, layer, (sequences, seq_len), &delimiters);
                let got = &kept.sinks[&layer];
                assert_eq!(
                    got.len(),
                    sequences * model.spec.num_heads,
                    "{name} layer {layer}"
                );
                for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
                    assert_eq!(g[2], 0.0, "{name}: no learned sink");
                    for (a, b) in g.iter().zip(e) {
                        assert!(
                            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                            "{name} layer {layer} (sequence, head) {i}: {g:?} vs {e:?}"
                        );
                    }
                }
                windowed += model.spec.sliding_windows[layer].is_some() as usize;
            }
            if name == "mistral" {
                assert_eq!(windowed, layers, "mistral: every layer has a window");
            }
            if name == "qwen2" {
                assert!(
                    windowed > 0 && windowed < layers,
                    "qwen2: full and windowed layers"
                );
            }
        }
    }
}
