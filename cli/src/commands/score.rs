//! `layerstream score`: mean next-token negative log-likelihood and perplexity per packed
//! sequence and overall, written to `OUT/score.json` and printed; with `--per-record`, one
//! line per record (`score_per_record.rs`). Both run through `score_run.rs` (budgets,
//! checkpoints, resume).

use super::score_run::{ScoreJob, run_scoring};
use super::{open_model, pack_workload, prepare_out_dir};
use crate::args::ScoreArgs;
use anyhow::{Context, Result};
use layerstream_planner::write_atomically;
use layerstream_runtime::Sequences;
use serde::Serialize;
use std::collections::BTreeMap;

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
    if args.records.per_record {
        return super::score_per_record::score_per_record(args, &named);
    }
    let model = &named.model;
    let workload = pack_workload(model, &args.workload)?;
    let packed = &workload.packed;
    let job = ScoreJob {
        token_ids: packed.token_ids.clone(),
        sequences: Sequences::uniform(packed.num_sequences, packed.seq_len),
        top_logprobs: None,
        data_name: workload.data_name.clone(),
        data_fingerprint: workload.data_fingerprint.clone(),
        settings: BTreeMap::from_iter(
            [
                ("num_samples".to_string(), packed.num_sequences.to_string()),
                ("seq_len".to_string(), packed.seq_len.to_string()),
            ]
            .into_iter()
            .chain(
                workload
                    .shard
                    .as_ref()
                    .map(|s| ("shard".to_string(), s.describe())),
            ),
        ),
    };
    eprintln!(
        "scoring {} sequences x {} tokens with {}",
        packed.num_sequences, packed.seq_len, named.name
    );
    let Some((results, _)) = run_scoring(args, &named, job, &["score.json"])? else {
        return Ok(());
    };
    let sums: Vec<(f64, usize)> = results
        .nll
        .iter()
        .map(|nll| (nll.iter().map(|&x| x as f64).sum(), nll.len()))
        .collect();
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
        .iter()
        .enumerate()
        .map(|(i, &(sum, tokens))| line(Some(first_sequence + i), sum, tokens))
        .collect();
    let total: f64 = sums.iter().map(|s| s.0).sum();
    let tokens: usize = sums.iter().map(|s| s.1).sum();
    let report = ScoreReport {
        schema_version: 1,
        tool: format!("layerstream {}", env!("CARGO_PKG_VERSION")),
        model: named.name.clone(),
        data: workload.data_name.clone(),
        seq_len: packed.seq_len,
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
