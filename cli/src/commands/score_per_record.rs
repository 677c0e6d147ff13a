//! `score --per-record`: one sequence per record, micro-batches of whole records up to the
//! token target, never packed or padded. Writes `OUT/scores.jsonl` (one line per record, in
//! input order) and `OUT/score.json` (the run's summary), and prints the summary line.

use super::NamedModel;
use super::record_workload::{RecordData, read_prepared};
use super::score_records::{PreparedRecord, RecordFields};
use super::score_run::{ScoreJob, run_scoring};
use crate::args::ScoreArgs;
use crate::chat_template;
use anyhow::{Context, Result, bail};
use layerstream_planner::write_atomically;
use layerstream_runtime::checkpoint::records_fingerprint;
use layerstream_runtime::data::TextTokenizer;
use layerstream_runtime::top_logprobs::TopLogprobs;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

/// One line of scores.jsonl.
#[derive(Serialize)]
struct ScoreLine {
    record: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<serde_json::Value>,
    tokens: usize,
    scored_tokens: usize,
    mean_nll: Option<f64>,
    sum_logprob: f64,
    perplexity: Option<f64>,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rendered: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<Vec<serde_json::Value>>,
}

/// Runs `score --per-record` with the opened model.
pub fn score_per_record(args: &ScoreArgs, named: &NamedModel) -> Result<()> {
    if args.workload.shard.is_some() {
        bail!("--per-record with --shard is not supported yet; score the records in one run");
    }
    let model = &named.model;
    let tokenizer = TextTokenizer::load(&model.dir, &model.config)?;
    let template = chat_template::choose(&args.chat_template, &model.dir)?;
    let fields = RecordFields {
        text: &args.workload.text_field,
        prompt: args.prompt_field.as_deref(),
        completion: args.completion_field.as_deref(),
        id: args.id_field.as_deref(),
    };
    let records = read_prepared(
        model,
        &args.workload,
        &args.records,
        &fields,
        template.as_ref(),
        &tokenizer,
    )?;
    let (sequences, token_ids) = records.sequences();
    let RecordData {
        path: data,
        max_length,
        prepared,
    } = records;
    eprintln!(
        "scoring {} records ({} tokens, the longest {}) with {}",
        sequences.count(),
        sequences.tokens(),
        sequences.longest(),
        named.name
    );
    let settings = BTreeMap::from([
        ("per_record".to_string(), "true".to_string()),
        ("max_length".to_string(), max_length.to_string()),
        ("text_field".to_string(), args.workload.text_field.clone()),
        (
            "prompt_field".to_string(),
            format!("{:?}", args.prompt_field),
        ),
        (
            "completion_field".to_string(),
            format!("{:?}", args.completion_field),
        ),
        (
            "chat_template".to_string(),
            format!("{:?}", template.as_ref().map(|t| &t.source)),
        ),
        ("top_logprobs".to_string(), args.top_logprobs.to_string()),
    ]);
    let job = ScoreJob {
        data_fingerprint: records_fingerprint(&token_ids, &sequences),
        token_ids,
        top_logprobs: (args.top_logprobs > 0).then(|| TopLogprobs {
            k: args.top_logprobs,
            positions: prepared.iter().map(PreparedRecord::prompt_end).collect(),
        }),
        sequences,
        data_name: data.display().to_string(),
        settings,
    };
    let outputs = ["scores.jsonl", "score.json"];
    let Some((results, _)) = run_scoring(args, named, job, &outputs)? else {
        return Ok(());
    };
    let lines: Vec<ScoreLine> = prepared
        .iter()
        .zip(&results.nll)
        .zip(&results.top)
        .map(|((record, nll), top)| score_line(record, nll, top, args.top_logprobs, &tokenizer))
        .collect();
    write_outputs(args, &named.name, &data, &lines)
}

/// A record's line: the NLL of its scored tokens (`nll[p - 1]` predicts position `p`).
fn score_line(
    record: &PreparedRecord,
    nll: &[f32],
    top: &[(u32, f32)],
    k: usize,
    tokenizer: &TextTokenizer,
) -> ScoreLine {
    let scored = &nll[record.scored_from.min(nll.len() + 1) - 1..];
    let sum: f64 = scored.iter().map(|&x| x as f64).sum();
    let mean = (!scored.is_empty()).then(|| sum / scored.len() as f64);
    ScoreLine {
        record: record.index,
        id: record.id.clone(),
        tokens: record.tokens.len(),
        scored_tokens: scored.len(),
        mean_nll: mean,
        sum_logprob: -sum,
        perplexity: mean.map(f64::exp),
        truncated: record.truncated,
        rendered: record.rendered.clone(),
        top_logprobs: (k > 0).then(|| {
            top.iter()
                .map(|&(id, logprob)| {
                    json!({"id": id, "token": tokenizer.decode_one(id), "logprob": logprob})
                })
                .collect()
        }),
    }
}

/// scores.jsonl, score.json and the summary line.
fn write_outputs(
    args: &ScoreArgs,
    model: &str,
    data: &std::path::Path,
    lines: &[ScoreLine],
) -> Result<()> {
    let mut jsonl = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut jsonl, line).context("cannot serialise a score")?;
        jsonl.push(b'\n');
    }
    let out = &args.run.out;
    let path = out.join("scores.jsonl");
    write_atomically(&path, &jsonl)
        .with_context(|| format!("cannot write {}; choose a writable --out", path.display()))?;
    let scored: usize = lines.iter().map(|l| l.scored_tokens).sum();
    let nll: f64 = -lines.iter().map(|l| l.sum_logprob).sum::<f64>();
    let mean = (scored > 0).then(|| nll / scored as f64);
    let truncated = lines.iter().filter(|l| l.truncated).count();
    let summary = json!({
        "schema_version": 2,
        "tool": format!("layerstream {}", env!("CARGO_PKG_VERSION")),
        "model": model,
        "data": data.display().to_string(),
        "per_record": true,
        "records": lines.len(),
        "tokens": lines.iter().map(|l| l.tokens).sum::<usize>(),
        "scored_tokens": scored,
        "mean_nll": mean,
        "perplexity": mean.map(f64::exp),
        "truncated_records": truncated,
        "scores": "scores.jsonl",
    });
    let summary_path = out.join("score.json");
    let text = serde_json::to_vec_pretty(&summary).context("cannot serialise the summary")?;
    write_atomically(&summary_path, &text).with_context(|| {
        format!(
            "cannot write {}; choose a writable --out",
            summary_path.display()
        )
    })?;
    println!(
        "{} records, {scored} scored tokens, mean NLL {}, perplexity {}, {truncated} truncated: {}",
        lines.len(),
        mean.map_or("-".into(), |m| format!("{m:.4}")),
        mean.map_or("-".into(), |m| format!("{:.3}", m.exp())),
        path.display()
    );
    Ok(())
}
