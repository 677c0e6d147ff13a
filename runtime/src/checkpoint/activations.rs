//! Raw activations, only when asked for (`--save-activations`), laid out for training a
//! sparse autoencoder: per layer and point, the rows (one per saved token) go into
//! safetensors shards of at most `shard_bytes`, each holding
//!
//! - `activations` `(rows, width)` in F32 or BF16 (bf16: each f32 rounded to nearest even, as
//!   `tensor.to(torch.bfloat16)` rounds),
//! - `token_ids`, `sequence` and `position` `(rows,)` U32: which token each row is,
//!
//! named `activations/layer_{l}_{point}.safetensors` when one shard holds them, else
//! `layer_{l}_{point}-{k:05}-of-{n:05}.safetensors` (k from 1). Rows run sequence by sequence,
//! positions ascending; with `--save-tokens N` each sequence keeps a seeded sample of N
//! positions (the same for every layer and point, and for a sequence whatever shard of the
//! data it ran in). Each shard is written in place as micro-batches arrive (it may be larger
//! than memory) under a temporary name and renamed when the layer is done; then
//! `activations/layer_{l}.json` lists the layer's shards, and `activations/index.json` every
//! saved layer's, with the shapes, points, layers and the token file (`tokens.safetensors`:
//! the rows' `token_ids`, `sequence` and `position`, the same for every layer and point).

use crate::analysis::resample::SplitMix64;
use crate::capture::CapturePoint;
use crate::error::{Result, RuntimeError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Element type of the saved activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationDtype {
    /// The values as computed.
    F32,
    /// Each value rounded to the nearest bf16 (ties to even): half the bytes.
    Bf16,
}

impl ActivationDtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            ActivationDtype::F32 => 4,
            ActivationDtype::Bf16 => 2,
        }
    }

    fn safetensors_name(self) -> &'static str {
        match self {
            ActivationDtype::F32 => "F32",
            ActivationDtype::Bf16 => "BF16",
        }
    }

    fn append(self, values: &[f32], bytes: &mut Vec<u8>) {
        match self {
            ActivationDtype::F32 => bytes.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            ActivationDtype::Bf16 => bytes.extend(
                values
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()),
            ),
        }
    }
}

/// How a run's activations are laid out: which tokens, in what type, in shards of what size.
/// Files written under another layout are not reused (their layer is computed again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationLayout {
    /// Element type.
    pub dtype: ActivationDtype,
    /// Positions kept per sequence (`None`: all).
    pub tokens_per_sequence: Option<usize>,
    /// Seed of the sampled positions.
    pub seed: u64,
    /// Largest shard, bytes (a shard always holds at least one row).
    pub shard_bytes: u64,
    /// Sequences of the workload.
    pub sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// The workload's first sequence in the whole data (a `--shard` run's range start).
    pub first_sequence: usize,
}

impl ActivationLayout {
    /// Positions kept per sequence.
    pub fn kept_per_sequence(&self) -> usize {
        self.tokens_per_sequence
            .map_or(self.seq_len, |n| n.min(self.seq_len))
    }

    /// Rows of one layer and point: sequences times kept positions.
    pub fn rows(&self) -> usize {
        self.sequences * self.kept_per_sequence()
    }

    /// The positions kept of workload sequence `sequence`, ascending: all, or a sample drawn
    /// by a generator seeded with the seed and the sequence's number in the whole data.
    pub fn positions(&self, sequence: usize) -> Vec<usize> {
        let kept = self.kept_per_sequence();
        if kept == self.seq_len {
            return (0..self.seq_len).collect();
        }
        let global = (self.first_sequence + sequence) as u64;
        let mut rng = SplitMix64::new(self.seed ^ global.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // A partial Fisher-Yates shuffle: the first `kept` of a random permutation.
        let mut all: Vec<usize> = (0..self.seq_len).collect();
        for i in 0..kept {
            let j = i + rng.below(self.seq_len - i);
            all.swap(i, j);
        }
        let mut chosen = all[..kept].to_vec();
        chosen.sort_unstable();
        chosen
    }

    /// Rows per shard for activations `width` wide.
    pub fn rows_per_shard(&self, width: usize) -> usize {
        let row = (width * self.dtype.size()) as u64;
        ((self.shard_bytes / row.max(1)) as usize).clamp(1, self.rows().max(1))
    }

    /// The shard files of a layer and point `width` wide, in row order.
    pub fn shard_names(&self, layer: usize, point: CapturePoint, width: usize) -> Vec<String> {
        let count = self.rows().div_ceil(self.rows_per_shard(width)).max(1);
        if count == 1 {
            return vec![format!("layer_{layer}_{point}.safetensors")];
        }
        (1..=count)
            .map(|k| format!("layer_{layer}_{point}-{k:05}-of-{count:05}.safetensors"))
            .collect()
    }
}

/// One shard, as the layer and index files list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Layer.
    pub layer: usize,
    /// Capture point.
    pub point: String,
    /// File name in `activations/`.
    pub path: String,
    /// Its first row of the layer and point's rows (a row of `tokens.safetensors`).
    pub first_row: usize,
    /// `[rows, width]` of its `activations`.
    pub shape: [usize; 2],
    /// File size.
    pub bytes: u64,
}

/// `activations/layer_{l}.json`: what a finished layer saved, under which layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerActivations {
    layout: ActivationLayout,
    points: Vec<String>,
    shards: Vec<ShardEntry>,
}

/// The folder of the activation files.
pub fn activations_dir(out: &Path) -> PathBuf {
    out.join("activations")
}

fn layer_record_path(out: &Path, layer: usize) -> PathBuf {
    activations_dir(out).join(format!("layer_{layer}.json"))
}

fn read_layer_record(out: &Path, layer: usize) -> Option<LayerActivations> {
    let text = std::fs::read(layer_record_path(out, layer)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether `layer`'s activations of every point in `points` are saved in `out` under
/// `layout`, every shard there with its size.
pub fn layer_is_saved(
    out: &Path,
    layer: usize,
    points: &[CapturePoint],
    layout: &ActivationLayout,
) -> bool {
    let Some(record) = read_layer_record(out, layer) else {
        return false;
    };
    let dir = activations_dir(out);
    record.layout == *layout
        && points
            .iter()
            .all(|p| record.points.iter().any(|q| *q == p.to_string()))
        && record.shards.iter().all(|shard| {
            std::fs::metadata(dir.join(&shard.path)).is_ok_and(|m| m.len() == shard.bytes)
        })
}

/// Writes the activation shards of the requested points.
pub struct ActivationSaver {
    out: PathBuf,
    points: Vec<CapturePoint>,
    layout: ActivationLayout,
    token_ids: Vec<u32>,
    /// `(sequences,)` of `(kept,)`: the positions kept of each workload sequence.
    positions: Vec<Vec<usize>>,
    /// The open shards of the layer being run, by point and shard number.
    open: BTreeMap<(CapturePoint, usize), OpenShard>,
    /// The layer being run, and its points' widths.
    layer: Option<(usize, BTreeMap<CapturePoint, usize>)>,
}

struct OpenShard {
    file: File,
    temp: PathBuf,
    entry: ShardEntry,
    data_start: u64,
}

impl ActivationSaver {
    /// A saver for `points` of a workload of `token_ids (sequences, seq_len)` into `out`.
    pub fn new(
        out: &Path,
        points: Vec<CapturePoint>,
        token_ids: Vec<u32>,
        layout: ActivationLayout,
    ) -> Self {
        let positions = (0..layout.sequences).map(|s| layout.positions(s)).collect();
        ActivationSaver {
            out: out.to_path_buf(),
            points,
            layout,
            token_ids,
            positions,
            open: BTreeMap::new(),
            layer: None,
        }
    }

    /// `(rows,)` each: the token id, sequence (in the whole data) and position of rows
    /// `first..first + rows`.
    fn row_identity(&self, first: usize, rows: usize) -> [Vec<u32>; 3] {
        let kept = self.layout.kept_per_sequence();
        let mut identity = [const { Vec::new() }; 3];
        for row in first..first + rows {
            let (sequence, k) = (row / kept, row % kept);
            let position = self.positions[sequence][k];
            identity[0].push(self.token_ids[sequence * self.layout.seq_len + position]);
            identity[1].push((self.layout.first_sequence + sequence) as u32);
            identity[2].push(position as u32);
        }
        identity
    }

    fn create(
        &self,
        layer: usize,
        point: CapturePoint,
        shard: usize,
        width: usize,
    ) -> Result<OpenShard> {
        let names = self.layout.shard_names(layer, point, width);
        let per_shard = self.layout.rows_per_shard(width);
        let first_row = shard * per_shard;
        let rows = per_shard.min(self.layout.rows() - first_row);
        let dir = activations_dir(&self.out);
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::io("cannot create", &dir, e))?;
        let temp = dir.join(format!(".layer_{layer}_{point}-{shard}.tmp"));
        let identity = self.row_identity(first_row, rows);
        let identity_names = ["token_ids", "sequence", "position"];
        let tensors: Vec<(&str, &str, Vec<usize>, u64)> = std::iter::once((
            "activations",
            self.layout.dtype.safetensors_name(),
            vec![rows, width],
            (rows * width * self.layout.dtype.size()) as u64,
        ))
        .chain(
            identity_names
                .iter()
                .map(|n| (*n, "U32", vec![rows], (rows * 4) as u64)),
        )
        .collect();
        let header = safetensors_header(layer, point, &self.layout, &tensors);
        let error = |e| RuntimeError::io("cannot write", &temp, e);
        let mut file = File::create(&temp).map_err(error)?;
        file.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(error)?;
        file.write_all(&header).map_err(error)?;
        let data_start = 8 + header.len() as u64;
        let values = tensors[0].3;
        file.seek(SeekFrom::Start(data_start + values))
            .map_err(error)?;
        let bytes: Vec<u8> = identity
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        file.write_all(&bytes).map_err(error)?;
        Ok(OpenShard {
            file,
            temp,
            entry: ShardEntry {
                layer,
                point: point.to_string(),
                path: names[shard].clone(),
                first_row,
                shape: [rows, width],
                bytes: data_start + values + bytes.len() as u64,
            },
            data_start,
        })
    }

    /// Writes the kept rows of `values (sequences * seq_len, width)`, sequences
    /// `first_sequence..` of the workload.
    pub fn write(
        &mut self,
        layer: usize,
        point: CapturePoint,
        first_sequence: usize,
        values: &[f32],
        width: usize,
    ) -> Result<()> {
        if !self.points.contains(&point) || width == 0 {
            return Ok(());
        }
        let widths = &mut self.layer.get_or_insert_with(|| (layer, BTreeMap::new())).1;
        widths.insert(point, width);
        let (seq_len, kept) = (self.layout.seq_len, self.layout.kept_per_sequence());
        let row_bytes = width * self.layout.dtype.size();
        let per_shard = self.layout.rows_per_shard(width);
        let sequences = values.len() / (seq_len * width);
        let mut bytes = Vec::with_capacity(kept * row_bytes);
        for local in 0..sequences {
            let sequence = first_sequence + local;
            let mut row = sequence * kept;
            let mut k = 0;
            // The sequence's rows, one contiguous run per shard they fall in.
            while k < kept {
                let shard = row / per_shard;
                let run = (kept - k).min((shard + 1) * per_shard - row);
                bytes.clear();
                for &position in &self.positions[sequence][k..k + run] {
                    let start = (local * seq_len + position) * width;
                    self.layout
                        .dtype
                        .append(&values[start..start + width], &mut bytes);
                }
                if !self.open.contains_key(&(point, shard)) {
                    let created = self.create(layer, point, shard, width)?;
                    self.open.insert((point, shard), created);
                }
                let open = self.open.get_mut(&(point, shard)).expect("opened above");
                let offset = open.data_start + ((row - shard * per_shard) * row_bytes) as u64;
                let error = |e| RuntimeError::io("cannot write", &open.temp, e);
                open.file.seek(SeekFrom::Start(offset)).map_err(error)?;
                open.file.write_all(&bytes).map_err(error)?;
                row += run;
                k += run;
            }
        }
        Ok(())
    }

    /// The layer is done: its shards get their final names, its record and the index are
    /// written.
    pub fn finish_layer(&mut self) -> Result<()> {
        let Some((layer, widths)) = self.layer.take() else {
            return Ok(());
        };
        let dir = activations_dir(&self.out);
        let mut shards = Vec::new();
        for (_, open) in std::mem::take(&mut self.open) {
            open.file
                .sync_all()
                .map_err(|e| RuntimeError::io("cannot write", &open.temp, e))?;
            let path = dir.join(&open.entry.path);
            std::fs::rename(&open.temp, &path)
                .map_err(|e| RuntimeError::io("cannot rename", &open.temp, e))?;
            shards.push(open.entry);
        }
        let record = LayerActivations {
            layout: self.layout.clone(),
            points: widths.keys().map(|p| p.to_string()).collect(),
            shards,
        };
        let json = serde_json::to_vec_pretty(&record).expect("serialisable");
        write_atomic(&layer_record_path(&self.out, layer), &json)?;
        self.write_tokens()?;
        write_index(&self.out, &self.layout)
    }

    /// `activations/tokens.safetensors`: every row's token id, sequence and position.
    fn write_tokens(&self) -> Result<()> {
        let rows = self.layout.rows();
        let identity = self.row_identity(0, rows);
        let names = ["token_ids", "sequence", "position"];
        let tensors: Vec<(&str, &str, Vec<usize>, u64)> = names
            .iter()
            .map(|n| (*n, "U32", vec![rows], (rows * 4) as u64))
            .collect();
        let mut bytes = Vec::new();
        let header = tokens_header(&self.layout, &tensors);
        bytes.extend((header.len() as u64).to_le_bytes());
        bytes.extend(header);
        bytes.extend(identity.iter().flatten().flat_map(|v| v.to_le_bytes()));
        write_atomic(&activations_dir(&self.out).join(TOKENS_FILE), &bytes)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    layerstream_planner::write_atomically(path, bytes)
        .map_err(|e| RuntimeError::io("cannot write", path, e))
}

/// The token file's name in `activations/`.
pub const TOKENS_FILE: &str = "tokens.safetensors";

/// `activations/index.json`: every layer saved under `layout`, its shards, shapes and
/// points, and the token file.
#[derive(Debug, Serialize, Deserialize)]
pub struct ActivationIndex {
    /// `layerstream-activations`.
    pub format: String,
    /// Element type, positions per sequence, seed, shard size, workload.
    pub layout: ActivationLayout,
    /// Rows of each layer and point (one per saved token).
    pub rows: usize,
    /// The rows' `token_ids`, `sequence` and `position` (U32, `(rows,)` each).
    pub tokens: String,
    /// Layers saved.
    pub layers: Vec<usize>,
    /// Points saved, with their width per layer.
    pub points: BTreeMap<String, BTreeMap<usize, usize>>,
    /// Every shard, by layer then point then row.
    pub shards: Vec<ShardEntry>,
}

/// Rewrites `activations/index.json` from the layer records saved under `layout`.
pub fn write_index(out: &Path, layout: &ActivationLayout) -> Result<()> {
    let dir = activations_dir(out);
    let mut layers: Vec<usize> = std::fs::read_dir(&dir)
        .map_err(|e| RuntimeError::io("cannot read", &dir, e))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("layer_")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    layers.sort_unstable();
    let mut index = ActivationIndex {
        format: "layerstream-activations".into(),
        layout: layout.clone(),
        rows: layout.rows(),
        tokens: TOKENS_FILE.into(),
        layers: Vec::new(),
        points: BTreeMap::new(),
        shards: Vec::new(),
    };
    for layer in layers {
        let Some(record) = read_layer_record(out, layer).filter(|r| r.layout == *layout) else {
            continue;
        };
        index.layers.push(layer);
        for shard in record.shards {
            index
                .points
                .entry(shard.point.clone())
                .or_default()
                .insert(layer, shard.shape[1]);
            index.shards.push(shard);
        }
    }
    index
        .shards
        .sort_by(|a, b| (a.layer, &a.point, a.first_row).cmp(&(b.layer, &b.point, b.first_row)));
    let json = serde_json::to_vec_pretty(&index).expect("serialisable");
    write_atomic(&dir.join("index.json"), &json)
}

/// A shard's header: its metadata and `tensors` (name, dtype, shape, bytes) back to back,
/// padded to 8 bytes.
fn safetensors_header(
    layer: usize,
    point: CapturePoint,
    layout: &ActivationLayout,
    tensors: &[(&str, &str, Vec<usize>, u64)],
) -> Vec<u8> {
    let metadata = serde_json::json!({
        "layer": layer.to_string(),
        "point": point.to_string(),
        "layout": serde_json::to_string(layout).expect("serialisable"),
    });
    header_bytes(metadata, tensors)
}

fn tokens_header(layout: &ActivationLayout, tensors: &[(&str, &str, Vec<usize>, u64)]) -> Vec<u8> {
    let metadata = serde_json::json!({
        "layout": serde_json::to_string(layout).expect("serialisable"),
    });
    header_bytes(metadata, tensors)
}

fn header_bytes(metadata: serde_json::Value, tensors: &[(&str, &str, Vec<usize>, u64)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), metadata);
    let mut offset = 0u64;
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header).expect("serialisable");
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(tokens: Option<usize>, shard_bytes: u64) -> ActivationLayout {
        ActivationLayout {
            dtype: ActivationDtype::Bf16,
            tokens_per_sequence: tokens,
            seed: 7,
            shard_bytes,
            sequences: 3,
            seq_len: 10,
            first_sequence: 0,
        }
    }

    #[test]
    fn sampled_positions_are_distinct_sorted_and_follow_the_whole_datas_sequence() {
        let whole = layout(Some(4), 1 << 30);
        for s in 0..3 {
            let p = whole.positions(s);
            assert_eq!(p.len(), 4);
            assert!(p.windows(2).all(|w| w[0] < w[1]) && p[3] < 10);
        }
        assert_ne!(whole.positions(0), whole.positions(1));
        // Sequence 2 of the whole data is sequence 0 of a shard starting there.
        let shard = ActivationLayout {
            first_sequence: 2,
            ..whole.clone()
        };
        assert_eq!(shard.positions(0), whole.positions(2));
        assert_eq!(layout(None, 1).positions(1), (0..10).collect::<Vec<_>>());
        assert_eq!(layout(Some(99), 1).kept_per_sequence(), 10);
    }

    #[test]
    fn shards_hold_whole_rows_up_to_the_limit() {
        // 30 rows of 8 bf16 values (16 bytes): 100 bytes hold 6 rows, so 5 shards.
        let l = layout(None, 100);
        assert_eq!(l.rows_per_shard(8), 6);
        let names = l.shard_names(2, CapturePoint::Ln1, 8);
        assert_eq!(names.len(), 5);
        assert_eq!(names[0], "layer_2_ln1-00001-of-00005.safetensors");
        // A limit below one row still holds one row per shard.
        assert_eq!(l.rows_per_shard(1000), 1);
        assert_eq!(
            layout(None, 1 << 30).shard_names(0, CapturePoint::ResidPost, 8),
            vec!["layer_0_resid_post.safetensors"]
        );
    }
}
