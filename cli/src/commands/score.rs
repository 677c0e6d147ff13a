//! `layerstream score`: mean next-token negative log-likelihood and perplexity per sequence
//! and overall, written to `OUT/score.json` and printed.

use super::{choose_backend, micro_batch_sequences, open_model, pack_workload, prepare_out_dir};
use crate::args::ScoreArgs;
use crate::progress::WithProgress;
use anyhow::{Context, Result};
use layerstream_planner::memory::HiddenPlacement;
use layerstream_planner::write_atomically;
use layerstream_runtime::CaptureMode;
use layerstream_runtime::{FinalStage, RunObserver, RunRequest, run};
use serde::Serialize;
use std::collections::BTreeSet;

/// Sums of next-token NLL per sequence.
#[derive(Default)]
struct NllSums {
    per_sequence: Vec<(f64, usize)>, // (sum of NLL, tokens scored)
    seq_len: usize,
}

impl RunObserver for NllSums {
    fn on_next_token_nll(&mut self, first: usize, nll: &[f32]) {
        let per = self.seq_len - 1;
        for (offset, values) in nll.chunks_exact(per).enumerate() {
            let sum: f64 = values.iter().map(|&x| x as f64).sum();
            let index = first + offset;
            if self.per_sequence.len() <= index {
                self.per_sequence.resize(index + 1, (0.0, 0));
            }
            self.per_sequence[index] = (sum, values.len());
        }
    }
}

/// One line of the score.
#[derive(Debug, Serialize)]
struct ScoreLine {
    /// Sequence index, or absent for the overall line.
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<usize>,
    /// Tokens predicted (seq_len - 1 per sequence).
    tokens_scored: usize,
    /// Mean NLL in nats.
    mean_nll: f64,
    /// exp(mean NLL).
    perplexity: f64,
}

/// `score.json`.
#[derive(Debug, Serialize)]
struct ScoreReport {
    schema_version: u32,
    tool: String,
    model: String,
    data: String,
    seq_len: usize,
    /// With `--shard`: the shard (its sequences are numbered as in the whole data).
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<String>,
    overall: ScoreLine,
    sequences: Vec<ScoreLine>,
}

/// Runs `score`.
pub fn score(args: &ScoreArgs) -> Result<()> {
    let _out_lock = prepare_out_dir(&args.run.out)?;
    let named = open_model(&args.model, crate::hub_download::Need::Run)?;
    let model = &named.model;
    let workload = pack_workload(model, &args.workload)?;
    let backend = choose_backend(&args.run)?;
    let request = RunRequest {
        token_ids: workload.packed.token_ids.clone(),
        first_delimiters: Vec::new(),
        num_sequences: workload.packed.num_sequences,
        seq_len: workload.packed.seq_len,
        capture_layers: BTreeSet::new(),
        capture_points: Vec::new(),
        capture_mode: CaptureMode::Activations,
        final_stage: FinalStage::NextTokenNll,
        micro_batch_sequences: micro_batch_sequences(&args.run, &workload),
        start: None,
        checkpoint_hidden_states: false,
        hidden_placement: HiddenPlacement::Device,
        spill_dir: None,
        memory_budget: None,
        split_layers: Default::default(),
    };
    eprintln!(
        "scoring {} sequences x {} tokens with {}, {backend}",
        request.num_sequences, request.seq_len, named.name
    );
    let mut sums = NllSums {
        seq_len: request.seq_len,
        ..NllSums::default()
    };
    {
        let mut progress = WithProgress::new(&mut sums, model.spec.num_layers, args.run.progress);
        let summary = run(model, &request, &backend, &mut progress)?;
        progress.finish();
        super::print_transfer(&summary);
    }
    let line = |sequence: Option<usize>, sum: f64, tokens: usize| {
        let mean_nll = sum / tokens as f64;
        ScoreLine {
            sequence,
            tokens_scored: tokens,
            mean_nll,
            perplexity: mean_nll.exp(),
        }
    };
    let first_sequence = workload.shard.as_ref().map_or(0, |s| s.range.start);
    let sequences: Vec<ScoreLine> = sums
        .per_sequence
        .iter()
        .enumerate()
        .map(|(i, &(sum, tokens))| line(Some(first_sequence + i), sum, tokens))
        .collect();
    let total: f64 = sums.per_sequence.iter().map(|s| s.0).sum();
    let tokens: usize = sums.per_sequence.iter().map(|s| s.1).sum();
    let report = ScoreReport {
        schema_version: 1,
        tool: format!("layerstream {}", env!("CARGO_PKG_VERSION")),
        model: named.name.clone(),
        data: workload.data_name.clone(),
        seq_len: request.seq_len,
        shard: workload.shard.as_ref().map(|s| s.describe()),
        overall: line(None, total, tokens),
        sequences,
    };
    println!(
        "{:>8}  {:>8}  {:>10}  {:>12}",
        "sequence", "tokens", "mean NLL", "perplexity"
    );
    for s in &report.sequences {
        println!(
            "{:>8}  {:>8}  {:>10.4}  {:>12.3}",
            s.sequence.unwrap_or_default(),
            s.tokens_scored,
            s.mean_nll,
            s.perplexity
        );
    }
    println!(
        "{:>8}  {:>8}  {:>10.4}  {:>12.3}",
        "overall", report.overall.tokens_scored, report.overall.mean_nll, report.overall.perplexity
    );
    let path = args.run.out.join("score.json");
    let json = serde_json::to_vec_pretty(&report).context("cannot serialise the score")?;
    write_atomically(&path, &json).with_context(|| {
        format!(
            "cannot write {}; choose a writable folder with --out",
            path.display()
        )
    })?;
    println!("score: {}", path.display());
    Ok(())
}
