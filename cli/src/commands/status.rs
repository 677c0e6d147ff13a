//! `layerstream status OUT`: where an analysis output folder stands.

use crate::args::StatusArgs;
use anyhow::{Context, Result};
use layerstream_planner::progress::{FileProblem, Progress, unix_now};
use layerstream_runtime::checkpoint::{PROGRESS_FILE, recorded_layers};

/// Runs `status`.
pub fn status(args: &StatusArgs) -> Result<()> {
    let path = args.out.join(PROGRESS_FILE);
    // Read and parsed once; when that fails, the layers' own records may still say a lot.
    let read = std::fs::read_to_string(&path)
        .with_context(|| {
            format!(
                "cannot read {}: {} is not an output folder of layerstream analyze (or nothing has finished yet)",
                path.display(),
                args.out.display()
            )
        })
        .and_then(|text| {
            serde_json::from_str::<Progress>(&text)
                .with_context(|| format!("{} cannot be read as progress.json", path.display()))
        });
    let progress = match read {
        Ok(progress) => progress,
        Err(error) => {
            let recorded = recorded_layers(&args.out);
            if recorded.is_empty() {
                return Err(error);
            }
            println!(
                "{} is missing or cannot be read; {} finished layer(s) have their own records ({}): the same analyze command recovers them",
                path.display(),
                recorded.len(),
                ranges(&recorded)
            );
            return Ok(());
        }
    };
    let row = |key: &str, value: String| println!("{key:<18} {value}");
    row("folder", args.out.display().to_string());
    row(
        "model",
        format!(
            "{} (fingerprint {})",
            progress.model_name,
            &progress.model_fingerprint[..12]
        ),
    );
    row(
        "data",
        format!(
            "{} (fingerprint {})",
            progress.data_name,
            &progress.data_fingerprint[..12]
        ),
    );
    for (key, value) in &progress.settings {
        row(key, value.clone());
    }
    for (key, value) in &progress.plan {
        row(key, value.clone());
    }
    let mut damaged = Vec::new();
    for (layer, record) in &progress.layers {
        for file in &record.files {
            if let Err(problem) = file.verify(&args.out) {
                damaged.push(format!(
                    "layer {layer}: {} {}",
                    file.path,
                    describe(problem)
                ));
            }
        }
    }
    let requested = &progress.requested_layers;
    let done: Vec<usize> = requested
        .iter()
        .copied()
        .filter(|l| progress.layers.contains_key(l))
        .collect();
    let remaining: Vec<usize> = requested
        .iter()
        .copied()
        .filter(|l| !progress.layers.contains_key(l))
        .collect();
    row(
        "layers requested",
        format!(
            "{} of {} ({})",
            requested.len(),
            progress.num_layers,
            ranges(requested)
        ),
    );
    row("layers done", format!("{} ({})", done.len(), ranges(&done)));
    row(
        "layers remaining",
        format!("{} ({})", remaining.len(), ranges(&remaining)),
    );
    match progress.hidden.iter().max_by_key(|h| h.after_layer) {
        Some(h) => row(
            "hidden states",
            format!(
                "after layer {} ({}{})",
                h.after_layer,
                h.file.path,
                h.file
                    .verify(&args.out)
                    .err()
                    .map_or(String::new(), |p| format!(", {}", describe(p)))
            ),
        ),
        None => row("hidden states", "none kept".into()),
    }
    row("runs", progress.runs.to_string());
    row(
        "last update",
        format!("{} s ago", unix_now().saturating_sub(progress.updated_unix)),
    );
    // Finished once report.json, report.md and the plots are written (each recorded after
    // it is written) and are still there.
    let outputs = &progress.outputs;
    let written = ["report.json", "report.md"]
        .iter()
        .all(|name| outputs.iter().any(|o| o == name))
        && outputs.iter().any(|o| o.starts_with("plots/"))
        && outputs.iter().all(|o| args.out.join(o).exists());
    let state = if remaining.is_empty() && damaged.is_empty() {
        if written {
            "finished (report.json, report.md and plots written)"
        } else {
            "all layers done; the same command writes report.json, report.md and the plots"
        }
    } else if damaged.is_empty() {
        "interrupted: run the same analyze command again to continue"
    } else {
        "damaged files found: the same command recomputes those layers"
    };
    row("state", state.into());
    for line in damaged {
        println!("  {line}");
    }
    Ok(())
}

fn describe(problem: FileProblem) -> &'static str {
    match problem {
        FileProblem::Missing => "is missing",
        FileProblem::Damaged => "is damaged",
    }
}

/// `0-3, 6, 8-11`.
fn ranges(layers: &[usize]) -> String {
    if layers.is_empty() {
        return "none".into();
    }
    let mut parts = Vec::new();
    let mut start = layers[0];
    let mut previous = start;
    for &layer in &layers[1..] {
        if layer != previous + 1 {
            parts.push(if start == previous {
                start.to_string()
            } else {
                format!("{start}-{previous}")
            });
            start = layer;
        }
        previous = layer;
    }
    parts.push(if start == previous {
        start.to_string()
    } else {
        format!("{start}-{previous}")
    });
    parts.join(", ")
}
