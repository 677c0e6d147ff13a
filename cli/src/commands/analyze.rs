//! `layerstream analyze`: the main job. Runs the workload layer by layer into an output
//! folder that records every finished layer (progress.json), so running the same command
//! again after a crash continues where it stopped; writes `OUT/report.json` and prints a
//! short summary.

use super::activation_dump::{activation_layout, layers_missing_activations, saved_points};
use super::estimate::{make_estimate, planned_run, print_estimate};
use super::plots::write_plots;
use super::record_workload::record_workload;
use super::report_markdown::report_markdown;
use super::{
    NamedModel, Workload, choose_backend, micro_batch_sequences, open_model, pack_workload,
    prepare_out_dir,
};
use crate::args::AnalyzeArgs;
use crate::progress::{ProgressMode, WithProgress};
use anyhow::Result;
use layerstream_runtime::analysis::massive::{MASSIVE_MEDIAN_RATIO, MASSIVE_MIN_MAGNITUDE};
use layerstream_runtime::analysis::massive_report::TokenInfo;
use layerstream_runtime::analysis::outliers::{MIN_LAYER_FRACTION, MIN_POSITION_FRACTION};
use layerstream_runtime::analysis::report::{
    ActivationReport, AnalysisSettings, ReportData, ReportModel, ReportShard,
};
use layerstream_runtime::checkpoint::activations::ActivationLayout;
use layerstream_runtime::checkpoint::write_file;
use layerstream_runtime::checkpoint::{
    AnalysisFolder, FolderOptions, RunIdentity, merge::TOKENS_FILE, model_fingerprint,
};
use layerstream_runtime::data::TextTokenizer;
use layerstream_runtime::selection::{parse_layers, parse_points};
use layerstream_runtime::timeline;
use layerstream_runtime::{
    Backend, CaptureMode, CapturePoint, FinalStage, PointSet, RunRequest, run,
};
use std::collections::BTreeMap;
use std::time::Instant;

/// Runs `analyze`.
pub fn analyze(args: &AnalyzeArgs) -> Result<()> {
    if let Some(devices) = &args.devices {
        if args.records.per_record {
            anyhow::bail!(
                "--per-record with --devices is not supported yet (the devices run shards of packed data); analyse the records on one device"
            );
        }
        return super::devices::analyze_on_devices(args, devices);
    }
    let started = Instant::now();
    timeline::mark(|| "analyze started".into());
    let need = match args.dry_run {
        true => crate::hub_download::Need::Headers,
        false => crate::hub_download::Need::Run,
    };
    let named = open_model(&args.model, need)?;
    timeline::mark(|| "model opened (headers checked)".into());
    // Records are read before planning: their count and tokens are the workload's shape.
    let records = match args.records.per_record {
        true => Some(record_workload(
            &named.model,
            &args.workload,
            &args.records,
        )?),
        false => None,
    };
    // Records are planned as sequences of their mean length (rounded up).
    let (planned_sequences, planned_len) = match &records {
        Some(w) => (w.rows.count(), w.rows.tokens().div_ceil(w.rows.count())),
        None => (
            super::shard::planned_sequences(&args.workload)?,
            args.workload.seq_len,
        ),
    };
    let plan = match (args.dry_run, args.plan.vram) {
        (false, None) => None,
        _ => Some(make_estimate(
            &named,
            planned_sequences,
            planned_len,
            &args.layers,
            &args.points,
            false,
            args.run.compute_dtype,
            args.run.planned_micro_batch_tokens(),
            &args.plan,
        )?),
    };
    if args.dry_run {
        print_estimate(plan.as_ref().expect("planned above"));
        return Ok(());
    }
    let _out_lock = prepare_out_dir(&args.run.out)?;
    let model = &named.model;
    let layers = parse_layers(&args.layers, model.spec.num_layers)?;
    let points = parse_points(&args.points)?;
    if points.contains(&CapturePoint::AttnGate) && model.spec.mixer_names().is_empty() {
        anyhow::bail!(
            "--points attn_gate: {} ({}) has no output gate; attn_gate exists in gated-attention and Gated DeltaNet layers (qwen3_next)",
            named.name,
            model.config.model_type
        );
    }
    let saved_points = saved_points(args, &points)?;
    if records.is_some() && !saved_points.is_empty() {
        anyhow::bail!(
            "--save-activations with --per-record is not supported yet: activation dumps keep sequences of one length; drop --per-record (packed data) or --save-activations"
        );
    }
    let workload = match records {
        Some(records) => records,
        None => pack_workload(model, &args.workload)?,
    };
    timeline::mark(|| "workload tokenized and packed".into());
    if args.batches >= 2 && args.batches > workload.packed.num_sequences {
        eprintln!(
            "note: --batches {} needs at least {} sequences ({} here): the report has no cross-batch overlap (cross_batch: null)",
            args.batches, args.batches, workload.packed.num_sequences
        );
    }
    let backend = choose_backend(&args.run)?;
    timeline::mark(|| format!("backend ready: {backend}"));
    let packed = &workload.packed;
    let micro_batch = match &plan {
        Some(estimate) => estimate.plan.micro_batch_sequences,
        None => micro_batch_sequences(&args.run, &workload),
    };
    // Micro-batches of whole sequences up to this many tokens.
    let micro_batch_tokens = match (&plan, workload.rows.uniform_len()) {
        (_, Some(len)) => micro_batch * len,
        (Some(_), None) => micro_batch * planned_len,
        (None, None) => args.run.micro_batch_tokens(),
    };
    let identity = run_identity(&named, args, &workload, &points, &backend, micro_batch);
    let options = FolderOptions {
        restart: args.resume.restart,
        keep_hidden: args.keep_hidden,
    };
    let mut folder = AnalysisFolder::open(
        &args.run.out,
        identity,
        &layers,
        model.spec.num_layers,
        options,
    )?;
    for note in &folder.notes {
        eprintln!("{note}");
    }
    let finished: Vec<usize> = folder.progress().layers.keys().copied().collect();
    if args.run.progress == ProgressMode::Json && folder.progress().runs > 1 {
        eprintln!(
            "{}",
            serde_json::json!({"event": "resume", "folder": args.run.out, "layers_finished": finished})
        );
    }
    if workload.shard.is_some() {
        // A shard keeps its token ids: `merge` joins them into the whole data's (checked
        // against the data fingerprint) for the report's token strings and positions.
        folder.record_outputs([TOKENS_FILE.to_string()])?;
        let bytes: Vec<u8> = packed
            .token_ids
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect();
        write_file(&args.run.out, TOKENS_FILE, &bytes)?;
    }
    let dump = activation_layout(args, model, &workload, &saved_points, &layers)?;
    let mut to_compute = folder.layers_to_compute(&layers);
    to_compute.extend(layers_missing_activations(
        args,
        model,
        &layers,
        &to_compute,
        &saved_points,
        dump.as_ref(),
    ));
    let tokens = workload.rows.tokens();
    let mut notes = Vec::new();
    let start = folder.start_point(&to_compute, tokens, model.spec.hidden_size, &mut notes)?;
    for note in notes {
        eprintln!("{note}");
    }
    let tokenizer = TextTokenizer::load(&model.dir, &model.config)?;
    let text = |id: u32| tokenizer.token_text(id);
    let first_delimiters = TokenInfo {
        token_ids: &packed.token_ids,
        rows: &workload.rows,
        text: &text,
    }
    .first_delimiters();
    let planned = planned_run(plan.as_ref(), &backend, &args.plan);
    let request = RunRequest {
        token_ids: packed.token_ids.clone(),
        first_delimiters,
        sequences: workload.rows.clone(),
        capture_layers: to_compute.clone(),
        capture_points: points,
        capture_mode: CaptureMode::Statistics {
            threshold: args.threshold,
            save: PointSet::of(&saved_points),
        },
        final_stage: FinalStage::None,
        top_logprobs: None,
        head_vocab_rows: None,
        micro_batch_tokens,
        start,
        checkpoint_hidden_states: true,
        hidden_placement: planned.hidden_placement,
        // Workload-sized files when the hidden states live on disk.
        spill_dir: Some(args.run.out.join("work")),
        memory_budget: planned.memory_budget,
        split_layers: planned.split_layers,
    };
    let run_started = Instant::now();
    let layers_run =
        (request.layers_to_run(model.spec.num_layers)).saturating_sub(request.first_layer());
    let saved = dump.map(|layout| (saved_points, layout));
    compute_layers(args, &named, &request, &backend, &mut folder, saved)?;
    let run_seconds = run_started.elapsed().as_secs_f64();
    let timing = Timing {
        started,
        run_seconds,
        tokens,
        layers_run,
    };
    write_outputs(args, &named, &workload, &mut folder, timing)?;
    Ok(())
}

/// What decides the arithmetic, as progress.json records it.
fn arithmetic(backend: &Backend, compute: &layerstream_runtime::cuda::ComputeChoice) -> String {
    match backend {
        Backend::Cpu(_) => "cpu f32".to_string(),
        Backend::Cuda(cuda) => format!("cuda {} compute {compute:?}", cuda.gpu.arch).to_lowercase(),
    }
}

/// One line per layer: max |x| and the count at or above the threshold, per capture point.
fn print_summary(report: &ActivationReport, threshold: f32) {
    println!("model: {} ({})", report.model.name, report.model.model_type);
    println!(
        "data:  {} ({} sequences x {} tokens)",
        report.data.name, report.data.num_sequences, report.data.seq_len
    );
    let Some(first) = report.layers.first() else {
        return;
    };
    // Forward order, not the report's alphabetical order.
    let names: Vec<&str> = CapturePoint::ALL
        .iter()
        .map(|p| p.name())
        .filter(|name| first.points.contains_key(*name))
        .collect();
    println!(
        "\nmax |x| per capture point (values with |x| >= {threshold} in brackets; NaN/Inf: values left out)"
    );
    print!("{:>5}", "layer");
    for name in &names {
        print!("  {name:>18}");
    }
    println!();
    for layer in &report.layers {
        print!("{:>5}", layer.layer);
        for name in &names {
            let cell = layer
                .points
                .get(*name)
                .map(|p| {
                    let bad = match p.summary.non_finite {
                        0 => String::new(),
                        n => format!(" {n} NaN/Inf"),
                    };
                    format!(
                        "{:.2} ({}){bad}",
                        p.summary.max_abs, p.summary.count_ge_threshold
                    )
                })
                .unwrap_or_default();
            print!("  {cell:>18}");
        }
        println!();
    }
    let largest = report
        .layers
        .iter()
        .flat_map(|l| {
            l.points
                .iter()
                .map(move |(name, p)| (l.layer, name.as_str(), p))
        })
        .max_by(|a, b| a.2.summary.max_abs.total_cmp(&b.2.summary.max_abs));
    if let Some((layer, name, point)) = largest {
        let dims: Vec<String> = point
            .summary
            .top_dims
            .iter()
            .map(|d| d.dim.to_string())
            .collect();
        println!(
            "\nlargest: blocks.{layer}.{name} max |x| {:.2}; top dimensions {}",
            point.summary.max_abs,
            dims.join(", ")
        );
    }
    for group in &report.outlier_features {
        let primary = &group.readings[0];
        let dims: Vec<String> = primary.dims.iter().map(|d| d.dim.to_string()).collect();
        println!(
            "outlier features at {}{} over {} layers (>= 25% of layers, >= 6% of positions; sublayers, union): {} dimension(s){}; {}",
            group.points.join("+"),
            group
                .mixer
                .as_ref()
                .map_or(String::new(), |m| format!(" of {m} layers")),
            group.layers,
            primary.dims.len(),
            if dims.is_empty() {
                String::new()
            } else {
                format!(" [{}]", dims.join(", "))
            },
            group.classification.kind
        );
    }
    if report.massive_activations.looked_for {
        println!(
            "massive activations (resid_post, > 100 and >= 1000x the sequence's median): {} in {} layer(s); per-token median reading: {} in {} layer(s)",
            report.massive_activations.total,
            report.massive_activations.layers_with.len(),
            report.massive_activations.per_token_median_total,
            report
                .massive_activations
                .per_token_median_layers_with
                .len()
        );
    }
    let sinks: Vec<_> = report
        .layers
        .iter()
        .filter_map(|l| l.attention_sinks.as_ref())
        .collect();
    if !sinks.is_empty() {
        let heads: usize = sinks.iter().map(|a| a.first.len()).sum();
        let sink_heads: f64 = sinks
            .iter()
            .map(|a| a.sink_head_share * a.first.len() as f64)
            .sum();
        let mean = sinks.iter().map(|a| a.mean_first).sum::<f64>() / sinks.len() as f64;
        println!(
            "attention sinks: mean attention on the first token {mean:.3}; {} of {heads} heads put more than half of it there",
            sink_heads.round()
        );
    }
}

/// Runs the layers still to compute (none: says so), writing each as it finishes.
fn compute_layers(
    args: &AnalyzeArgs,
    named: &NamedModel,
    request: &RunRequest,
    backend: &Backend,
    folder: &mut AnalysisFolder,
    saved: Option<(Vec<CapturePoint>, ActivationLayout)>,
) -> Result<()> {
    let model = &named.model;
    if request.capture_layers.is_empty() {
        eprintln!(
            "every requested layer is finished in {}; writing the report",
            args.run.out.display()
        );
    } else {
        eprintln!(
            "analyzing {} ({} layers) on {} sequences x {} tokens, {backend}; running layers {}-{}",
            named.name,
            model.spec.num_layers,
            request.num_sequences(),
            request.seq_len(),
            request.first_layer(),
            request.layers_to_run(model.spec.num_layers) - 1
        );
        let interval = std::time::Duration::from_secs_f64(args.resume.checkpoint_every.max(0.0));
        let mut observer =
            folder.observer(model.spec.hidden_size, request.sequences.clone(), interval);
        if let Some((points, layout)) = saved {
            observer.save_activations(points, request.token_ids.clone(), layout);
        }
        if args.run.progress == ProgressMode::Json {
            observer.on_written(Box::new(|written| {
                eprintln!("{}", crate::progress::checkpoint_event(written))
            }));
        }
        let mut progress = WithProgress::new(
            &mut observer,
            request.layers_to_run(model.spec.num_layers),
            args.run.progress,
        );
        let outcome = run(model, request, backend, &mut progress);
        progress.finish();
        // Workload files on disk are deleted when the run ends; their folder with them.
        if let Some(spill) = &request.spill_dir {
            let _ = std::fs::remove_dir(spill);
        }
        // Every finished layer is written before the outcome is reported.
        let written = observer.finish();
        let kept = folder.progress().layers.len();
        let summary = outcome.and_then(|summary| written.map(|()| summary)).map_err(|e| {
            match layerstream_runtime::stop::stop_requested() {
                Some(_) => anyhow::anyhow!(
                    "{e:#}: {kept} finished layer(s) are kept in {}; run the same command again to continue",
                    args.run.out.display()
                ),
                None => anyhow::anyhow!(
                    "{e:#}\nfinished layers are kept in {}: fix the cause and run the same command again to continue",
                    args.run.out.display()
                ),
            }
        })?;
        super::print_transfer(&summary);
    }
    Ok(())
}

/// What progress.json records of the run: model, data, settings and plan.
fn run_identity(
    named: &NamedModel,
    args: &AnalyzeArgs,
    workload: &Workload,
    points: &[CapturePoint],
    backend: &Backend,
    micro_batch: usize,
) -> RunIdentity {
    let (model, packed) = (&named.model, &workload.packed);
    let fingerprint = model_fingerprint(model);
    let point_names: Vec<&str> = points.iter().map(|p| p.name()).collect();
    RunIdentity {
        model_fingerprint: fingerprint.digest,
        weight_digests: fingerprint.weights,
        model_name: named.name.clone(),
        data_fingerprint: workload.data_fingerprint.clone(),
        data_name: workload.data_name.clone(),
        settings: BTreeMap::from_iter(
            shard_setting(workload)
                .into_iter()
                .chain(records_setting(workload))
                .chain([
                    ("num_samples".to_string(), packed.num_sequences.to_string()),
                    ("seq_len".to_string(), packed.seq_len.to_string()),
                    ("threshold".to_string(), args.threshold.to_string()),
                    ("points".to_string(), point_names.join(",")),
                    (
                        "arithmetic".to_string(),
                        arithmetic(backend, &args.run.compute_dtype),
                    ),
                ]),
        ),
        plan: BTreeMap::from([
            ("micro_batch_sequences".to_string(), micro_batch.to_string()),
            ("backend".to_string(), backend.to_string()),
        ]),
    }
}

/// A shard's range, as the run's identity records it (a whole run records none, so its
/// progress.json is as before).
fn shard_setting(workload: &Workload) -> Option<(String, String)> {
    workload
        .shard
        .as_ref()
        .map(|s| ("shard".to_string(), s.describe()))
}

/// `--per-record` and its `--max-length`, as the run's identity records them (packed data
/// records none, so its progress.json is as before).
fn records_setting(workload: &Workload) -> Option<(String, String)> {
    workload.records.as_ref().map(|r| {
        (
            "per_record_max_length".to_string(),
            r.max_length.to_string(),
        )
    })
}

/// How long the run took, for the closing line.
struct Timing {
    started: Instant,
    run_seconds: f64,
    tokens: usize,
    layers_run: usize,
}

/// report.json, report.md and the plots, then the summary on stdout.
fn write_outputs(
    args: &AnalyzeArgs,
    named: &NamedModel,
    workload: &Workload,
    folder: &mut AnalysisFolder,
    timing: Timing,
) -> Result<()> {
    let (model, packed) = (&named.model, &workload.packed);
    let Timing {
        started,
        run_seconds,
        tokens,
        layers_run,
    } = timing;
    let report_started = Instant::now();
    // Recorded before they are written, so `--restart` knows them even after a kill.
    folder.record_outputs(["report.json".to_string(), "report.md".to_string()])?;
    let tokenizer = TextTokenizer::load(&model.dir, &model.config)?;
    let text = |id: u32| tokenizer.token_text(id);
    let token_info = TokenInfo {
        token_ids: &packed.token_ids,
        rows: &workload.rows,
        text: &text,
    };
    let (path, report) = folder.write_report(
        ReportModel {
            name: named.name.clone(),
            model_type: model.config.model_type.clone(),
            num_layers: model.spec.num_layers,
            hidden_size: model.spec.hidden_size,
            parameters: model.weights.inventory().parameter_count(),
            layer_mixers: model.spec.mixer_names(),
        },
        ReportData {
            name: workload.data_name.clone(),
            num_sequences: packed.num_sequences,
            seq_len: packed.seq_len,
            documents: packed.documents_used,
            shard: workload.shard.as_ref().map(|s| ReportShard {
                index: Some(s.shard.index),
                count: Some(s.shard.count),
                first_sequence: s.range.start,
                total_sequences: s.total,
            }),
            per_record: workload.records.clone(),
        },
        AnalysisSettings {
            threshold: args.threshold,
            min_layer_fraction: MIN_LAYER_FRACTION,
            min_position_fraction: MIN_POSITION_FRACTION,
            massive_min_magnitude: MASSIVE_MIN_MAGNITUDE,
            massive_median_ratio: MASSIVE_MEDIAN_RATIO,
            massive_median: "per_sequence".to_string(),
            bootstrap_resamples: args.bootstrap,
            seed: args.seed,
            batches: args.batches,
            interval: "95% percentile bootstrap over sequences".to_string(),
        },
        &token_info,
    )?;
    timeline::mark(|| "report.json written".into());
    let markdown = report_markdown(&report);
    write_file(&args.run.out, "report.md", markdown.as_bytes())?;
    let plots = write_plots(&report, &args.run.out.join("plots"))?;
    folder.record_outputs(plots.iter().map(|name| format!("plots/{name}")))?;
    timeline::mark(|| "report.md and plots written".into());
    print_summary(&report, args.threshold);
    if let Some(warning) = report.non_finite.warning() {
        eprintln!("{warning}");
    }
    let (report_seconds, all_seconds) = (
        report_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    match layers_run {
        0 => println!(
            "\nno layer left to compute: every requested layer was finished; report and plots {report_seconds:.2} s; {all_seconds:.2} s in all"
        ),
        _ => println!(
            "\n{tokens} tokens through {layers_run} layers in {run_seconds:.2} s ({:.0} tokens/s); report and plots {report_seconds:.2} s; {all_seconds:.2} s in all",
            tokens as f64 * layers_run as f64
                / model.spec.num_layers as f64
                / run_seconds.max(1e-9),
        ),
    }
    println!(
        "report: {} (and report.md, {} plots in {})",
        path.display(),
        plots.len() / 2,
        args.run.out.join("plots").display()
    );
    Ok(())
}
