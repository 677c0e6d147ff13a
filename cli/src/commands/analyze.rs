//! `layerstream analyze`: the main job. Runs the workload layer by layer, writes
//! `OUT/report.json` and prints a short summary.

use super::{choose_backend, micro_batch_sequences, open_model, pack_workload, prepare_out_dir};
use crate::args::AnalyzeArgs;
use crate::progress::WithProgress;
use anyhow::{Context, Result};
use layerstream_planner::write_atomically;
use layerstream_runtime::CaptureMode;
use layerstream_runtime::analysis::ActivationReportBuilder;
use layerstream_runtime::analysis::report::{ActivationReport, ReportData, ReportModel};
use layerstream_runtime::selection::{parse_layers, parse_points};
use layerstream_runtime::{CapturePoint, FinalStage, RunRequest, run};
use std::time::Instant;

/// Dimensions listed per capture point.
const TOP_DIMS: usize = 5;

/// Runs `analyze`.
pub fn analyze(args: &AnalyzeArgs) -> Result<()> {
    let started = Instant::now();
    prepare_out_dir(&args.run.out)?;
    let named = open_model(&args.model)?;
    let model = &named.model;
    let layers = parse_layers(&args.layers, model.spec.num_layers)?;
    let points = parse_points(&args.points)?;
    if !args.threshold.is_finite() || args.threshold <= 0.0 {
        anyhow::bail!("--threshold {} must be a positive number", args.threshold);
    }
    let workload = pack_workload(model, &args.workload)?;
    let backend = choose_backend(&args.run)?;
    let request = RunRequest {
        token_ids: workload.packed.token_ids.clone(),
        num_sequences: workload.packed.num_sequences,
        seq_len: workload.packed.seq_len,
        capture_layers: layers,
        capture_points: points,
        capture_mode: CaptureMode::Statistics {
            threshold: args.threshold,
        },
        final_stage: FinalStage::None,
        micro_batch_sequences: micro_batch_sequences(&args.run, &workload),
    };
    eprintln!(
        "analyzing {} ({} layers) on {} sequences x {} tokens, {backend}",
        named.name, model.spec.num_layers, request.num_sequences, request.seq_len
    );
    let mut builder = ActivationReportBuilder::new(args.threshold, TOP_DIMS);
    let run_started = Instant::now();
    {
        let mut progress =
            WithProgress::new(&mut builder, request.layers_to_run(model.spec.num_layers));
        let summary = run(model, &request, &backend, &mut progress)?;
        progress.finish();
        super::print_transfer(&summary);
    }
    let run_seconds = run_started.elapsed().as_secs_f64();
    let report = builder.finish(
        ReportModel {
            name: named.name.clone(),
            model_type: model.config.model_type.clone(),
            num_layers: model.spec.num_layers,
            hidden_size: model.spec.hidden_size,
        },
        ReportData {
            name: workload.data_name.clone(),
            num_sequences: request.num_sequences,
            seq_len: request.seq_len,
            documents: workload.packed.documents_used,
        },
    );
    let path = args.run.out.join("report.json");
    let json = serde_json::to_vec_pretty(&report).context("cannot serialise the report")?;
    write_atomically(&path, &json).with_context(|| {
        format!(
            "cannot write {}; choose a writable folder with --out",
            path.display()
        )
    })?;
    print_summary(&report, args.threshold);
    let tokens = request.num_sequences * request.seq_len;
    println!(
        "\n{tokens} tokens through {} layers in {run_seconds:.2} s ({:.0} tokens/s); {:.2} s in all",
        request.layers_to_run(model.spec.num_layers),
        tokens as f64 / run_seconds.max(1e-9),
        started.elapsed().as_secs_f64()
    );
    println!("report: {}", path.display());
    Ok(())
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
        .filter(|name| first.points.contains_key(name))
        .collect();
    println!("\nmax |x| per capture point (values with |x| >= {threshold} in brackets)");
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
                .get(name)
                .map(|p| format!("{:.2} ({})", p.max_abs, p.count_ge_threshold))
                .unwrap_or_default();
            print!("  {cell:>18}");
        }
        println!();
    }
    let largest = report
        .layers
        .iter()
        .flat_map(|l| l.points.iter().map(move |(name, p)| (l.layer, *name, p)))
        .max_by(|a, b| a.2.max_abs.total_cmp(&b.2.max_abs));
    if let Some((layer, name, point)) = largest {
        let dims: Vec<String> = point.top_dims.iter().map(|d| d.dim.to_string()).collect();
        println!(
            "\nlargest: blocks.{layer}.{name} max |x| {:.2}; top dimensions {}",
            point.max_abs,
            dims.join(", ")
        );
    }
}
