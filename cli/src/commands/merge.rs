//! `layerstream merge SHARD_OUT... --out OUT`: shards of one run (`--shard`) joined into the
//! folder and report one run over all their sequences writes (report.json byte for byte).
//! Merged folders merge again. A shard still running is "retry later" (exit 75); anything
//! else wrong with the shards is wrong input (exit 1), naming the folder.

use super::plots::write_plots;
use super::report_markdown::report_markdown;
use crate::args::MergeArgs;
use crate::embedded;
use anyhow::{Context, Result, bail};
use layerstream_runtime::analysis::massive_report::TokenInfo;
use layerstream_runtime::analysis::report::{ActivationReport, ReportShard};
use layerstream_runtime::checkpoint::merge::{
    ShardFolder, TOKENS_FILE, check_shards, merged_tokens, write_merged,
};
use layerstream_runtime::checkpoint::{data_fingerprint, write_file};
use layerstream_runtime::data::TextTokenizer;
use layerstream_runtime::{Model, Sequences};

/// Runs `merge`.
pub fn merge(args: &MergeArgs) -> Result<()> {
    if args.shards.iter().any(|s| s == &args.out) {
        bail!(
            "--out {} is one of the shards; merge into another folder",
            args.out.display()
        );
    }
    let _out_lock = super::prepare_out_dir(&args.out)?;
    merge_into(args)
}

/// Merges into `args.out`, whose lock the caller holds.
pub fn merge_into(args: &MergeArgs) -> Result<()> {
    if args.shards.iter().any(|s| s == &args.out) {
        bail!(
            "--out {} is one of the shards; merge into another folder",
            args.out.display()
        );
    }
    let mut shards = args
        .shards
        .iter()
        .map(|dir| ShardFolder::open(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = check_shards(&mut shards, args.partial)?;
    let first_report = shards
        .iter()
        .find_map(|s| {
            std::fs::read(s.dir.join("report.json"))
                .ok()
                .map(|b| (s, b))
        })
        .context("no shard has a report.json: finish one of them first")?;
    let report: ActivationReport = serde_json::from_slice(&first_report.1).with_context(|| {
        format!(
            "{}/report.json cannot be read",
            first_report.0.dir.display()
        )
    })?;
    let tokens = merged_tokens(&shards)?;
    let seq_len = report.data.seq_len;
    if plan.range == (0..plan.total)
        && data_fingerprint(&tokens, plan.total, seq_len) != shards[0].progress.data_fingerprint
    {
        bail!(
            "the shards' token ids do not give the data fingerprint they record: a shard's {TOKENS_FILE} is damaged or of other data"
        );
    }
    let model = open_recorded_model(args, &shards[0].progress.model_name)?;
    let mut folder = write_merged(&shards, &plan, &args.out, report.model.hidden_size)?;
    folder.record_outputs([
        TOKENS_FILE.to_string(),
        "report.json".into(),
        "report.md".into(),
    ])?;
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    write_file(&args.out, TOKENS_FILE, &bytes)?;
    let tokenizer = TextTokenizer::load(&model.dir, &model.config)?;
    let text = |id: u32| tokenizer.token_text(id);
    let rows = Sequences::uniform(tokens.len() / seq_len.max(1), seq_len);
    let token_info = TokenInfo {
        token_ids: &tokens,
        rows: &rows,
        text: &text,
    };
    let mut data = report.data.clone();
    data.num_sequences = plan.range.len();
    data.shard = (plan.range != (0..plan.total)).then_some(ReportShard {
        index: None,
        count: None,
        first_sequence: plan.range.start,
        total_sequences: plan.total,
    });
    let (path, merged) = folder.write_report(
        report.model.clone(),
        data,
        report.settings.clone(),
        &token_info,
    )?;
    write_file(&args.out, "report.md", report_markdown(&merged).as_bytes())?;
    let plots = write_plots(&merged, &args.out.join("plots"))?;
    folder.record_outputs(plots.iter().map(|name| format!("plots/{name}")))?;
    println!(
        "merged {} shards: sequences {}..{} of {}, {} layers; report: {}",
        shards.len(),
        plan.range.start,
        plan.range.end,
        plan.total,
        plan.layers.len(),
        path.display()
    );
    Ok(())
}

/// The model the shards ran (for its tokenizer): `--model`, else the name they record.
fn open_recorded_model(args: &MergeArgs, recorded: &str) -> Result<Model> {
    let dir = match &args.model {
        Some(dir) => dir.clone(),
        None if recorded == embedded::DEFAULT_MODEL_NAME => embedded::default_model_dir()?,
        None => super::model_dir(std::path::Path::new(recorded))?,
    };
    Model::open(&dir).with_context(|| {
        format!("the shards ran {recorded}; merge needs its tokenizer: pass --model DIR")
    })
}
