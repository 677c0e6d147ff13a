//! `layerstream merge`: shard folders of one run joined into the folder one run over all
//! their sequences writes. The shards are checked (same model, data, settings and
//! arithmetic; their ranges cover the data once; finished), each layer's results merged
//! (`analysis/merge.rs`) and written through the same writer a run uses, so the report
//! assembled from the merged folder is the unsharded one's, byte for byte.

use super::files::{layer_json_path, layer_statistics_path, read_layer_report};
use super::folder::{AnalysisFolder, FolderOptions, PROGRESS_FILE, RunIdentity};
use super::lock::FolderLock;
use super::statistics_file::read_statistics;
use crate::analysis::PointStatistics;
use crate::analysis::merge::{Part, merge_router, merge_sinks, merge_statistics};
use crate::capture::CapturePoint;
use crate::error::{Result, RuntimeError};
use crate::sequences::Sequences;
use layerstream_planner::progress::Progress;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The settings key a shard records its range under.
pub const SHARD_SETTING: &str = "shard";
/// The token ids a run writes into its folder (`(sequences, seq_len)` little-endian u32).
pub const TOKENS_FILE: &str = "tokens.u32";

/// One shard folder, opened for merging (its lock held until dropped).
pub struct ShardFolder {
    /// The folder.
    pub dir: PathBuf,
    /// Its progress.json.
    pub progress: Progress,
    /// Its sequences of the whole data.
    pub range: Range<usize>,
    /// Sequences of the whole data.
    pub total: usize,
    _lock: FolderLock,
}

fn wrong(dir: &Path, what: String) -> RuntimeError {
    RuntimeError::InvalidRequest(format!("{}: {what}", dir.display()))
}

/// `sequences a..b of S` at the end of a shard setting.
fn parse_range(text: &str) -> Option<(Range<usize>, usize)> {
    let rest = text.split("sequences ").nth(1)?;
    let (range, total) = rest.trim_end_matches(')').split_once(" of ")?;
    let (a, b) = range.split_once("..")?;
    Some((a.parse().ok()?..b.parse().ok()?, total.parse().ok()?))
}

impl ShardFolder {
    /// Opens `dir`: a finished analysis folder (a shard, a merged folder, or a whole run).
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(PROGRESS_FILE);
        if !path.exists() {
            return Err(wrong(
                dir,
                "no progress.json: not an analysis output folder (or the shard never started)"
                    .into(),
            ));
        }
        let lock = FolderLock::take(dir)
            .map_err(|e| RuntimeError::ShardBusy(format!("{}: {e}", dir.display())))?;
        let text = std::fs::read(&path).map_err(|e| RuntimeError::io("cannot read", &path, e))?;
        let progress: Progress = serde_json::from_slice(&text).map_err(|e| {
            wrong(
                dir,
                format!("progress.json cannot be read ({e}); resume the shard to repair it"),
            )
        })?;
        let sequences: usize = progress
            .settings
            .get("num_samples")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| wrong(dir, "progress.json records no num_samples".into()))?;
        let (range, total) = match progress.settings.get(SHARD_SETTING) {
            None => (0..sequences, sequences),
            Some(text) => parse_range(text)
                .ok_or_else(|| wrong(dir, format!("unreadable shard setting {text:?}")))?,
        };
        if range.len() != sequences {
            return Err(wrong(
                dir,
                format!(
                    "its range {range:?} holds {} sequences, num_samples says {sequences}",
                    range.len()
                ),
            ));
        }
        Ok(ShardFolder {
            dir: dir.to_path_buf(),
            progress,
            range,
            total,
            _lock: lock,
        })
    }

    fn finished(&self) -> BTreeSet<usize> {
        self.progress.layers.keys().copied().collect()
    }
}

/// What a merge produces: the layers merged and the merged folder's range.
pub struct MergePlan {
    /// Layers every shard finished (all requested ones unless `partial`).
    pub layers: BTreeSet<usize>,
    /// The union's sequences.
    pub range: Range<usize>,
    /// Sequences of the whole data.
    pub total: usize,
}

/// Checks that `shards` (any order) are of one run, cover one contiguous range once, and
/// are finished (with `partial`, the layers all of them finished are merged). Sorts them.
pub fn check_shards(shards: &mut [ShardFolder], partial: bool) -> Result<MergePlan> {
    shards.sort_by_key(|s| s.range.start);
    let first = &shards[0];
    let comparable = |p: &Progress| {
        let mut settings = p.settings.clone();
        settings.remove(SHARD_SETTING);
        settings.remove("num_samples");
        (
            p.model_fingerprint.clone(),
            p.data_fingerprint.clone(),
            settings,
            p.requested_layers.clone(),
            p.num_layers,
        )
    };
    for shard in shards.iter() {
        if comparable(&shard.progress) != comparable(&first.progress) || shard.total != first.total
        {
            let differences = layerstream_planner::progress::identity_differences(
                &first.progress,
                &shard.progress,
            );
            return Err(wrong(
                &shard.dir,
                format!(
                    "not a shard of the same run as {}: {}",
                    first.dir.display(),
                    differences.join("; ")
                ),
            ));
        }
    }
    for pair in shards.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.range.start < a.range.end {
            return Err(wrong(
                &b.dir,
                format!(
                    "sequences {:?} overlap {}'s {:?}: a shard is given twice (or two runs of it)",
                    b.range,
                    a.dir.display(),
                    a.range
                ),
            ));
        }
        if b.range.start > a.range.end {
            return Err(RuntimeError::InvalidRequest(format!(
                "sequences {}..{} are in no shard given (between {} and {}): a shard is missing",
                a.range.end,
                b.range.start,
                a.dir.display(),
                b.dir.display()
            )));
        }
    }
    let requested: BTreeSet<usize> = first.progress.requested_layers.iter().copied().collect();
    let mut layers = requested.clone();
    for shard in shards.iter() {
        let done = shard.finished();
        let missing: Vec<usize> = requested.difference(&done).copied().collect();
        if missing.is_empty() {
            continue;
        }
        if !partial {
            return Err(wrong(
                &shard.dir,
                format!(
                    "unfinished: layers {missing:?} are not done; run the same command again to finish it (or merge with --partial)"
                ),
            ));
        }
        layers = layers.intersection(&done).copied().collect();
    }
    if layers.is_empty() {
        return Err(RuntimeError::InvalidRequest(
            "no layer is finished in every shard; nothing to merge".into(),
        ));
    }
    let range = shards[0].range.start..shards[shards.len() - 1].range.end;
    Ok(MergePlan {
        layers,
        range,
        total: first.total,
    })
}

/// The merged folder's identity: the shards' with the union's range.
pub fn merged_identity(shards: &[ShardFolder], plan: &MergePlan) -> RunIdentity {
    let p = &shards[0].progress;
    let mut settings = p.settings.clone();
    settings.insert("num_samples".into(), plan.range.len().to_string());
    settings.remove(SHARD_SETTING);
    if plan.range != (0..plan.total) {
        let text = format!(
            "sequences {}..{} of {}",
            plan.range.start, plan.range.end, plan.total
        );
        settings.insert(SHARD_SETTING.into(), text);
    }
    RunIdentity {
        model_fingerprint: p.model_fingerprint.clone(),
        weight_digests: p.weight_digests.clone(),
        model_name: p.model_name.clone(),
        data_fingerprint: p.data_fingerprint.clone(),
        data_name: p.data_name.clone(),
        settings,
        plan: p.plan.clone(),
    }
}

/// The shards' token ids, in order.
pub fn merged_tokens(shards: &[ShardFolder]) -> Result<Vec<u32>> {
    let mut tokens = Vec::new();
    for shard in shards {
        let path = shard.dir.join(TOKENS_FILE);
        let bytes = std::fs::read(&path).map_err(|e| RuntimeError::io("cannot read", &path, e))?;
        tokens.extend(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Ok(tokens)
}

/// Merges every layer of `plan` into `out` (opened like a run's folder) and returns it.
pub fn write_merged(
    shards: &[ShardFolder],
    plan: &MergePlan,
    out: &Path,
    hidden_width: usize,
) -> Result<AnalysisFolder> {
    let identity = merged_identity(shards, plan);
    let num_layers = shards[0].progress.num_layers;
    let options = FolderOptions {
        restart: true,
        keep_hidden: false,
    };
    let mut folder = AnalysisFolder::open(out, identity, &plan.layers, num_layers, options)?;
    {
        // Merged layers are recorded whole: no micro-batch's routing arrives here.
        let mut observer = folder.observer(hidden_width, Sequences::default(), Duration::MAX);
        for &layer in &plan.layers {
            let (statistics, router, sinks) = merge_layer(shards, layer)?;
            observer.record_layer(layer, statistics, router, sinks)?;
        }
        observer.finish()?;
    }
    Ok(folder)
}

type LayerResults = (
    BTreeMap<CapturePoint, PointStatistics>,
    Option<crate::analysis::RouterSummary>,
    Option<crate::analysis::sinks::SinkSummary>,
);

/// One layer of every shard, merged.
fn merge_layer(shards: &[ShardFolder], layer: usize) -> Result<LayerResults> {
    let mut reports = Vec::new();
    let mut statistics = Vec::new();
    for shard in shards {
        let report = read_layer_report(&shard.dir, &layer_json_path(layer))?;
        let mut stats = read_statistics(&shard.dir.join(layer_statistics_path(layer)))?;
        if let (Some(resid), Some(massive)) =
            (stats.get_mut(&CapturePoint::ResidPost), &report.massive)
        {
            resid.massive = Some(massive.clone());
        }
        reports.push(report);
        statistics.push(stats);
    }
    let offset = |i: usize| shards[i].range.start - shards[0].range.start;
    let mut merged = BTreeMap::new();
    for &point in statistics[0].keys() {
        let parts: Vec<Part<PointStatistics>> = statistics
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.get(&point)
                    .map(|value| Part {
                        first_sequence: offset(i),
                        value,
                    })
                    .ok_or_else(|| {
                        wrong(
                            &shards[i].dir,
                            format!("layer {layer} has no {point} statistics"),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        merged.insert(point, merge_statistics(&parts)?);
    }
    let router = summary_parts(&reports, &offset, |r| r.router.as_ref(), "router summary")?
        .map(|parts| merge_router(&parts))
        .transpose()?;
    let sinks = summary_parts(
        &reports,
        &offset,
        |r| r.sinks.as_ref(),
        "attention-sink sums",
    )?
    .map(|parts| merge_sinks(&parts))
    .transpose()?;
    Ok((merged, router, sinks))
}

/// Every shard's `what` of a layer (`None` when the first shard's layer has none), or an
/// error when only some have it.
fn summary_parts<'a, T>(
    reports: &'a [crate::analysis::LayerReport],
    offset: &impl Fn(usize) -> usize,
    get: impl Fn(&'a crate::analysis::LayerReport) -> Option<&'a T>,
    what: &str,
) -> Result<Option<Vec<Part<'a, T>>>> {
    if get(&reports[0]).is_none() {
        return Ok(None);
    }
    reports
        .iter()
        .enumerate()
        .map(|(i, r)| {
            get(r).map(|value| Part {
                first_sequence: offset(i),
                value,
            })
        })
        .collect::<Option<Vec<_>>>()
        .map(Some)
        .ok_or_else(|| {
            RuntimeError::InvalidRequest(format!(
                "layer {}: a shard has no {what}",
                reports[0].layer
            ))
        })
}
