//! Sequences of their own lengths (`score --per-record`) against PyTorch on every fixture:
//! records are prefixes of the reference's sequences (causal attention makes a prefix's
//! activations and logits the reference's first rows), several lengths in one micro-batch,
//! none padded. Every activation point of every layer, each record's next-token NLL and its
//! top-k log-probabilities must equal the reference's (`per_record.rs` on the CPU,
//! `gpu_per_record.rs` on CUDA).

use crate::{FIXTURES, Reference, assert_all_close, assert_matches_reference, fixture_model};
use layerstream_planner::memory::HiddenPlacement;
use layerstream_runtime::backend::Backend;
use layerstream_runtime::top_logprobs::TopLogprobs;
use layerstream_runtime::{
    CaptureMode, CapturePoint, FinalStage, Model, RunObserver, RunRequest, Sequences, run,
};
use std::collections::HashMap;

/// What the run hands over, per sequence in workload order.
#[derive(Default)]
struct Kept {
    /// `blocks.{l}.{point}` -> `(tokens, width)` in workload row order.
    captures: HashMap<String, Vec<f32>>,
    nll: Vec<f32>,
    top: Vec<Vec<(u32, f32)>>,
}

impl RunObserver for Kept {
    fn on_capture(
        &mut self,
        layer: usize,
        point: CapturePoint,
        _: usize,
        values: &[f32],
        _: usize,
    ) {
        self.captures
            .entry(format!("blocks.{layer}.{point}"))
            .or_default()
            .extend_from_slice(values);
    }
    fn on_next_token_nll(&mut self, _: usize, nll: &[f32]) {
        self.nll.extend_from_slice(nll);
    }
    fn on_top_logprobs(&mut self, _: usize, top: &[Vec<(u32, f32)>]) {
        self.top.extend_from_slice(top);
    }
}

/// `log_softmax(logits[row])` in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let norm = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&x| x as f64 - norm).collect()
}

/// Runs records of their own lengths (prefixes of the reference's sequences, mixed in
/// micro-batches) of every fixture on `backend` and checks every activation point, the
/// next-token NLL and the top-k log-probabilities against PyTorch's; with `split_head`, the
/// output head in parts of about a third of the vocabulary.
pub fn check_records_against_pytorch(backend: &Backend, what: &str, split_head: bool) {
    for name in FIXTURES {
        let reference = Reference::load(name);
        let model = Model::open(&fixture_model(name)).unwrap();
        let t = reference.seq_len;
        // (reference sequence, prefix length), lengths all different, one of 2 tokens.
        let records = [(0, t), (1, t / 2 + 3), (0, 7), (1, t - 1), (1, 2)];
        let sequences = Sequences::from_lengths(records.iter().map(|r| r.1));
        let ids = |s: usize| &reference.input_ids[s * t..(s + 1) * t];
        let positions: Vec<usize> = records.iter().map(|&(_, len)| (len - 1) / 2).collect();
        let k = 5;
        let request = RunRequest {
            token_ids: records
                .iter()
                .flat_map(|&(s, len)| ids(s)[..len].to_vec())
                .collect(),
            first_delimiters: Vec::new(),
            sequences,
            capture_layers: (0..model.spec.num_layers).collect(),
            capture_points: CapturePoint::ACTIVATIONS.to_vec(),
            capture_mode: CaptureMode::Activations,
            final_stage: FinalStage::NextTokenNll,
            top_logprobs: Some(TopLogprobs {
                k,
                positions: positions.clone(),
            }),
            head_vocab_rows: split_head.then(|| model.lm_head().shape[0] / 3 + 1),
            // Micro-batches of mixed lengths.
            micro_batch_tokens: t + t / 2,
            start: None,
            checkpoint_hidden_states: false,
            hidden_placement: HiddenPlacement::Device,
            spill_dir: None,
            memory_budget: None,
            split_layers: Default::default(),
        };
        let mut kept = Kept::default();
        run(&model, &request, backend, &mut kept).unwrap();

        for (key, got) in &kept.captures {
            let Some(expected) = reference.maybe(key) else {
                continue;
            };
            let width = expected.shape[2];
            let rows: Vec<f32> = records
                .iter()
                .flat_map(|&(s, len)| expected.values[s * t * width..][..len * width].to_vec())
                .collect();
            let label = format!("{what} {name} {key} per record");
            let layer: usize = key
                .split('.')
                .nth(1)
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if key.ends_with(".attn_in_o") && model.spec.delta_net(layer).is_some() {
                // As in the packed fidelity tests: both chunked DeltaNet forms are within
                // 1.1e-5 of the point's max |x| of a float64 run (delta_net_precision.py).
                let scale = rows.iter().fold(0f32, |m, x| m.max(x.abs()));
                assert_all_close(&label, got, &rows, 3e-5 * scale, 1e-4);
                continue;
            }
            assert_matches_reference(&label, got, &rows);
        }
        assert!(kept.captures.contains_key("blocks.0.resid_post"), "{name}");

        let logits = &reference.get("logits");
        let vocab = logits.shape[2];
        let row = |s: usize, p: usize| &logits.values[(s * t + p) * vocab..][..vocab];
        let mut expected_nll = Vec::new();
        for &(s, len) in &records {
            for p in 1..len {
                expected_nll.push(-log_softmax(row(s, p - 1))[ids(s)[p] as usize] as f32);
            }
        }
        assert_matches_reference(
            &format!("{what} {name} per-record nll"),
            &kept.nll,
            &expected_nll,
        );

        assert_eq!(kept.top.len(), records.len(), "{name}");
        for ((&(s, _), &p), top) in records.iter().zip(&positions).zip(&kept.top) {
            let reference_lp = log_softmax(row(s, p));
            let mut best = reference_lp.clone();
            best.sort_by(|a, b| b.total_cmp(a));
            let got: Vec<f32> = top.iter().map(|&(_, lp)| lp).collect();
            let want: Vec<f32> = best[..k].iter().map(|&x| x as f32).collect();
            assert_matches_reference(
                &format!("{what} {name} top-{k} log-probabilities"),
                &got,
                &want,
            );
            // Each token named has that log-probability in the reference (ties may order
            // differently).
            let named: Vec<f32> = top
                .iter()
                .map(|&(id, _)| reference_lp[id as usize] as f32)
                .collect();
            assert_matches_reference(&format!("{what} {name} top-{k} tokens"), &got, &named);
        }
    }
}
