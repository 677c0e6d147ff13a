//! `layerstream estimate` (and `analyze --dry-run`): the memory plan and time estimate of a
//! run, from config.json and the safetensors headers only.

use super::{NamedModel, open_model};
use crate::args::{EstimateArgs, PlanArgs};
use anyhow::Result;
use layerstream_planner::memory::{GemmDtype, HiddenPlacement, LayerPlan, MemoryPlan, Workload};
use layerstream_planner::split::describe_parts;
use layerstream_planner::statistics::CapturedPoint;
use layerstream_planner::{ByteSize, TensorDtype};
use layerstream_runtime::cuda::ComputeChoice;
use layerstream_runtime::plan::{
    Rates, TimeEstimate, dominant_weight_dtype, estimate_time, plan_model, widest_point,
};
use layerstream_runtime::selection::{parse_layers, parse_points};
use serde::Serialize;

/// Version of the `estimate --json` layout (docs/estimate-json.md).
pub const ESTIMATE_SCHEMA_VERSION: u32 = 3;

/// What `estimate --json` prints.
#[derive(Debug, Serialize)]
pub struct Estimate {
    schema_version: u32,
    model: String,
    model_type: String,
    num_layers: usize,
    parameters: u64,
    weight_bytes: u64,
    sequences: usize,
    seq_len: usize,
    layers_run: usize,
    points: Vec<&'static str>,
    lm_head: bool,
    gemm_dtype: GemmDtype,
    budget_bytes: Option<u64>,
    /// Where the host budget comes from: `--ram`, or this machine's available memory.
    host_budget_source: Option<&'static str>,
    /// Peak as a fraction of the budget.
    budget_fraction: Option<f64>,
    warnings: Vec<String>,
    /// The memory plan.
    pub plan: MemoryPlan,
    time: TimeEstimate,
}

/// The estimate for a run.
#[allow(clippy::too_many_arguments)]
pub fn make_estimate(
    named: &NamedModel,
    sequences: usize,
    seq_len: usize,
    layers: &str,
    points: &str,
    lm_head: bool,
    compute: ComputeChoice,
    micro_batch_tokens: usize,
    plan_args: &PlanArgs,
) -> Result<Estimate> {
    let model = &named.model;
    let spec = &model.spec;
    model.check_seq_len(seq_len)?;
    super::check_workload_size(sequences, seq_len, spec.hidden_size.max(spec.vocab_size))?;
    let layers = parse_layers(layers, spec.num_layers)?;
    let points = parse_points(points)?;
    let layers_run = if lm_head {
        spec.num_layers
    } else {
        layers.last().map_or(0, |&l| l + 1)
    };
    let gemm = match compute {
        ComputeChoice::F32 => GemmDtype::F32,
        ComputeChoice::Bf16 => GemmDtype::Bf16,
        ComputeChoice::F16 => GemmDtype::F16,
        ComputeChoice::Auto if dominant_weight_dtype(model) == TensorDtype::Bf16 => GemmDtype::Bf16,
        ComputeChoice::Auto => GemmDtype::F32,
    };
    let captured: Vec<CapturedPoint> = points
        .iter()
        .map(|&p| p.statistics_shape(widest_point(spec, layers_run, p)))
        .filter(|p| p.width > 0)
        .collect();
    let workload = Workload {
        sequences,
        seq_len,
        captured_points: if lm_head { Vec::new() } else { captured },
        lm_head,
        target_micro_batch_tokens: micro_batch_tokens,
    };
    let budget = plan_args.vram.map(|b| b.0);
    let host_budget = host_budget(plan_args);
    let plan = plan_model(
        model,
        &workload,
        gemm,
        budget,
        host_budget.map(|(bytes, _)| bytes),
        plan_args.overhead.0,
    )?;
    let budget_fraction = plan_args.vram.map(|b| plan.peak_bytes as f64 / b.0 as f64);
    let mut warnings = Vec::new();
    if let Some(fraction) = budget_fraction.filter(|&f| f > 0.9) {
        warnings.push(format!(
            "the plan uses {:.0}% of the budget: little room for what the driver or other processes take",
            fraction * 100.0
        ));
    }
    if !plan.split_layers.is_empty() {
        warnings.push(format!("{} layers do not fit the budget whole next to their prefetch buffer: they stream in parts (attention, then expert groups), which repeats the MLP input norm (and the router) once per part", plan.split_layers.len()));
    }
    match plan.hidden_placement {
        HiddenPlacement::Device => {}
        HiddenPlacement::PinnedHost => warnings.push("the workload's hidden states do not fit on the device: they stay in pinned host memory and cross PCIe twice per layer".into()),
        HiddenPlacement::Disk => warnings.push(format!("the workload's hidden states fit neither on the device nor in the host budget: they live in a {} file in the output folder (OUT/work) and are read and written once per layer", ByteSize(plan.disk_bytes))),
    }
    let rates = Rates {
        host_to_device_gbps: plan_args.h2d_gbps,
        disk_gbps: plan_args.disk_gbps,
        tflops: plan_args.tflops,
    };
    let inventory = model.weights.inventory();
    Ok(Estimate {
        schema_version: ESTIMATE_SCHEMA_VERSION,
        model: named.name.clone(),
        model_type: model.config.model_type.clone(),
        num_layers: spec.num_layers,
        parameters: inventory.parameter_count(),
        weight_bytes: inventory.total_bytes(),
        sequences,
        seq_len,
        layers_run,
        points: points.iter().map(|p| p.name()).collect(),
        lm_head,
        gemm_dtype: gemm,
        budget_bytes: plan_args.vram.map(|b| b.0),
        host_budget_source: host_budget.map(|(_, source)| source),
        budget_fraction,
        warnings,
        time: estimate_time(model, layers_run, sequences * seq_len, seq_len, rates),
        plan,
    })
}

/// The host budget of a plan and where it comes from: `--ram`, or 80% of the memory this
/// machine has available (Linux), or none.
fn host_budget(plan_args: &PlanArgs) -> Option<(u64, &'static str)> {
    match plan_args.ram {
        Some(ram) => Some((ram.0, "--ram")),
        None => available_memory().map(|bytes| (bytes / 10 * 8, "80% of available memory")),
    }
}

/// `MemAvailable` of /proc/meminfo.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Prints an estimate as a person reads it.
pub fn print_estimate(e: &Estimate) {
    let row = |key: &str, value: String| println!("{key:<16} {value}");
    let size = |b: u64| ByteSize(b).to_string();
    row(
        "model",
        format!(
            "{} ({}, {} layers, {})",
            e.model,
            e.model_type,
            e.num_layers,
            size(e.weight_bytes)
        ),
    );
    row(
        "workload",
        format!(
            "{} sequences x {} tokens, {} layers run, {}",
            e.sequences,
            e.seq_len,
            e.layers_run,
            if e.lm_head {
                "LM head (score)".to_string()
            } else {
                format!("points {}", e.points.join(","))
            }
        ),
    );
    row(
        "budget",
        match e.budget_bytes {
            Some(b) => format!("{} (--vram)", size(b)),
            None => "none given (--vram): showing what the run needs".into(),
        },
    );
    row("gemm dtype", format!("{:?}", e.gemm_dtype).to_lowercase());
    let p = &e.plan;
    row(
        "micro-batch",
        format!(
            "{} sequences ({} tokens)",
            p.micro_batch_sequences,
            p.micro_batch_sequences * e.seq_len
        ),
    );
    if let Some(rows) = p.head_vocab_rows {
        row(
            "output head",
            format!(
                "split by vocabulary rows, {rows} at a time ({} on the device): the whole head does not fit next to the micro-batch",
                size(p.regions.head)
            ),
        );
    }
    row(
        "hidden states",
        match p.hidden_placement {
            HiddenPlacement::Device => format!("on the device ({})", size(p.regions.hidden)),
            HiddenPlacement::PinnedHost => format!(
                "pinned host memory, {} on the device",
                size(p.regions.hidden)
            ),
            HiddenPlacement::Disk => format!(
                "on disk ({} in OUT/work), {} on the device",
                size(p.disk_bytes),
                size(p.regions.hidden)
            ),
        },
    );
    row(
        "host memory",
        format!(
            "{} pinned, budget {}",
            size(p.host_bytes),
            match (p.host_budget_bytes, e.host_budget_source) {
                (Some(b), Some(source)) => format!("{} ({source})", size(b)),
                _ => "none".into(),
            }
        ),
    );
    row(
        "split layers",
        match p.layers.iter().find(|l| l.parts.len() > 1) {
            None => "none: every layer streams whole".into(),
            Some(first) => format!(
                "{} of {} ({}), each as {}: largest part {} of {}",
                p.split_layers.len(),
                p.layers.len(),
                layer_ranges(&p.split_layers),
                describe_parts(
                    &first
                        .parts
                        .iter()
                        .map(|x| x.part.clone())
                        .collect::<Vec<_>>()
                ),
                size(largest_part_bytes(first)),
                size(first.weight_bytes),
            ),
        },
    );
    print_regions_and_layers(e);
}

/// The regions, the time estimate, warnings and the per-layer table.
fn print_regions_and_layers(e: &Estimate) {
    let row = |key: &str, value: String| println!("{key:<16} {value}");
    let size = |b: u64| ByteSize(b).to_string();
    let p = &e.plan;
    let r = &p.regions;
    row(
        "regions",
        format!(
            "staging {} (2 buffers), converted {}, hidden {}, accumulator {}, activations {}, moe {}, statistics {}, head {}, overhead {}",
            size(r.staging),
            size(r.converted),
            size(r.hidden),
            size(r.accumulator),
            size(r.activations),
            size(r.moe),
            size(r.statistics),
            size(r.head),
            size(r.overhead)
        ),
    );
    row(
        "peak",
        match e.budget_fraction {
            Some(f) => format!("{} ({:.0}% of the budget)", size(p.peak_bytes), f * 100.0),
            None => size(p.peak_bytes),
        },
    );
    let t = &e.time;
    row(
        "time",
        format!(
            "about {:.3} s with a warm page cache, {:.3} s cold (weights over PCIe {:.3} s at {} GB/s, arithmetic {:.3} s at {} TFLOP/s, disk {:.3} s at {} GB/s)",
            t.warm_seconds,
            t.cold_seconds,
            t.transfer_seconds,
            t.rates.host_to_device_gbps,
            t.compute_seconds,
            t.rates.tflops,
            t.disk_seconds,
            t.rates.disk_gbps
        ),
    );
    for warning in &e.warnings {
        println!("warning: {warning}");
    }
    println!(
        "\n{:>5}  {:>12}  {:>12}  {:>12}  {:>12}  {:>5}",
        "layer", "weights", "converted", "activations", "needs", "parts"
    );
    for l in &p.layers {
        println!(
            "{:>5}  {:>12}  {:>12}  {:>12}  {:>12}  {:>5}",
            l.layer,
            size(l.weight_bytes),
            size(l.converted_bytes),
            size(l.activation_bytes),
            size(l.needs_bytes),
            l.parts.len()
        );
    }
}

/// Stored bytes of a layer's largest part.
fn largest_part_bytes(layer: &LayerPlan) -> u64 {
    layer
        .parts
        .iter()
        .map(|p| p.weight_bytes)
        .max()
        .unwrap_or(0)
}

/// `0-3, 7, 9-12` for sorted layer indices.
fn layer_ranges(layers: &[usize]) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for &l in layers {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == l => *end = l,
            _ => ranges.push((l, l)),
        }
    }
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `estimate`.
pub fn estimate(args: &EstimateArgs) -> Result<()> {
    let named = open_model(&args.model, crate::hub_download::Need::Headers)?;
    let estimate = make_estimate(
        &named,
        args.num_samples,
        args.seq_len,
        &args.layers,
        &args.points,
        args.score,
        args.compute_dtype,
        args.micro_batch_tokens
            .unwrap_or(layerstream_planner::PLANNED_MICRO_BATCH_TOKENS),
        &args.plan,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&estimate)?);
    } else {
        print_estimate(&estimate);
    }
    Ok(())
}

/// What a plan decides of a run: where the hidden states live, the backend's memory budget
/// (GPU: `--vram` less the context overhead; CPU: `--ram`) and the layers that run in parts.
pub struct PlannedRun {
    /// Where the workload's hidden states live.
    pub hidden_placement: HiddenPlacement,
    /// Bytes the backend's regions may take.
    pub memory_budget: Option<u64>,
    /// The GPU plan's split layers; the CPU backend splits by `--ram` on its own.
    pub split_layers: std::collections::BTreeMap<usize, Vec<layerstream_planner::split::LayerPart>>,
}

/// The run `plan` (if any) asks of `backend`.
pub fn planned_run(
    plan: Option<&Estimate>,
    backend: &layerstream_runtime::Backend,
    args: &PlanArgs,
) -> PlannedRun {
    use layerstream_runtime::Backend;
    PlannedRun {
        hidden_placement: plan.map_or(HiddenPlacement::Device, |e| e.plan.hidden_placement),
        memory_budget: match backend {
            Backend::Cuda(_) => args.vram.map(|v| v.0.saturating_sub(args.overhead.0)),
            Backend::Cpu(_) => args.ram.map(|r| r.0),
        },
        split_layers: match (backend, plan) {
            (Backend::Cuda(_), Some(estimate)) => estimate.plan.split_parts(),
            _ => Default::default(),
        },
    }
}
