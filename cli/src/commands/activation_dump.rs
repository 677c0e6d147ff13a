//! `--save-activations` and its layout flags: which points, which tokens, in what type, in
//! shards of what size; and which finished layers must run again to save them.

use super::Workload;
use crate::args::AnalyzeArgs;
use anyhow::Result;
use layerstream_runtime::checkpoint::activations::{ActivationLayout, layer_is_saved};
use layerstream_runtime::plan::point_width;
use layerstream_runtime::selection::parse_points;
use layerstream_runtime::{CapturePoint, Model};
use std::collections::BTreeSet;

/// The points whose raw activations `--save-activations` asks for (all captured).
pub fn saved_points(args: &AnalyzeArgs, points: &[CapturePoint]) -> Result<Vec<CapturePoint>> {
    let Some(list) = &args.save_activations else {
        return Ok(Vec::new());
    };
    let listed = parse_points(list)?;
    if let Some(p) = listed.iter().find(|p| !points.contains(p)) {
        anyhow::bail!("--save-activations {p}: the point is not captured; add it to --points");
    }
    if let Some(p) = listed.iter().find(|p| !p.is_activation())
        && list.trim() != "all"
    {
        anyhow::bail!(
            "--save-activations {p}: {p} is not an activation and is not saved as one; report.json summarises it per layer. Save one of ln1, q, k, attn_in_o, attn_out, ln2, mlp_out, resid_post"
        );
    }
    Ok(listed.into_iter().filter(|p| p.is_activation()).collect())
}

/// The layout of the saved activations (`None` without `--save-activations`); refuses a
/// `--shard-bytes` below one row of a saved point.
pub fn activation_layout(
    args: &AnalyzeArgs,
    model: &Model,
    workload: &Workload,
    saved_points: &[CapturePoint],
    layers: &BTreeSet<usize>,
) -> Result<Option<ActivationLayout>> {
    if saved_points.is_empty() {
        return Ok(None);
    }
    let layout = ActivationLayout {
        dtype: args.activation_dtype,
        tokens_per_sequence: args.save_tokens.0,
        seed: args.seed,
        shard_bytes: args.shard_bytes.0,
        sequences: workload.packed.num_sequences,
        seq_len: workload.packed.seq_len,
        first_sequence: workload.shard.as_ref().map_or(0, |s| s.range.start),
    };
    let widest = layers
        .iter()
        .flat_map(|&layer| {
            saved_points
                .iter()
                .map(move |&point| (point_width(&model.spec, layer, point), point, layer))
        })
        .max();
    if let Some((width, point, layer)) = widest {
        let row = (width * layout.dtype.size()) as u64;
        if row > layout.shard_bytes {
            anyhow::bail!(
                "--shard-bytes {}: one token of {point} at layer {layer} takes {row} bytes ({width} values); give at least that",
                args.shard_bytes.0
            );
        }
    }
    Ok(Some(layout))
}

/// Finished layers an earlier run computed without the activations `--save-activations`
/// asks for now (or saved them in another type, sample or shard size): computed again to
/// save them (said on stderr).
pub fn layers_missing_activations(
    args: &AnalyzeArgs,
    model: &Model,
    layers: &BTreeSet<usize>,
    to_compute: &BTreeSet<usize>,
    saved_points: &[CapturePoint],
    layout: Option<&ActivationLayout>,
) -> BTreeSet<usize> {
    let Some(layout) = layout else {
        return BTreeSet::new();
    };
    let missing: BTreeSet<usize> = layers
        .iter()
        .copied()
        .filter(|layer| !to_compute.contains(layer))
        .filter(|&layer| {
            // Points the layer does not have (width 0) have no files.
            let present: Vec<CapturePoint> = saved_points
                .iter()
                .copied()
                .filter(|&p| point_width(&model.spec, layer, p) > 0)
                .collect();
            !present.is_empty() && !layer_is_saved(&args.run.out, layer, &present, layout)
        })
        .collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(usize::to_string).collect();
        eprintln!(
            "--save-activations: layer(s) {} were finished by an earlier run without these activations; computing them again to save them",
            list.join(", ")
        );
    }
    missing
}
