//! A finished layer's own record, `layers/layer_{l}.record.json`: the run it belongs to (the
//! identity progress.json compares) and the checksums of the layer's files. Written after the
//! layer's files and before progress.json names the layer, so a folder whose progress.json
//! was deleted or cannot be read still knows which layers are finished and whose they are.

use super::files::write_file;
use crate::error::Result;
use layerstream_planner::progress::{LayerRecord, Progress};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Marks the file as a layer record of this layout.
const RECORD_KIND: &str = "layerstream layer record 1";

/// Relative path of a layer's record.
pub fn layer_record_path(layer: usize) -> String {
    format!("layers/layer_{layer}.record.json")
}

/// What a layer's record says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSelfRecord {
    /// [`RECORD_KIND`].
    pub kind: String,
    /// The run's model fingerprint.
    pub model_fingerprint: String,
    /// The run's weight digests.
    #[serde(default)]
    pub weight_digests: BTreeMap<String, String>,
    /// For messages.
    pub model_name: String,
    /// The run's data fingerprint.
    pub data_fingerprint: String,
    /// For messages.
    pub data_name: String,
    /// The run's result-changing settings.
    pub settings: BTreeMap<String, String>,
    /// The layer.
    pub layer: usize,
    /// Its files and when it finished.
    pub record: LayerRecord,
    /// Times its results were computed in this folder.
    pub times_computed: u32,
}

impl LayerSelfRecord {
    /// The record of `layer` of the run `progress` describes, computed `times_computed` times.
    pub fn of(
        progress: &Progress,
        layer: usize,
        record: &LayerRecord,
        times_computed: u32,
    ) -> Self {
        LayerSelfRecord {
            kind: RECORD_KIND.to_string(),
            model_fingerprint: progress.model_fingerprint.clone(),
            weight_digests: progress.weight_digests.clone(),
            model_name: progress.model_name.clone(),
            data_fingerprint: progress.data_fingerprint.clone(),
            data_name: progress.data_name.clone(),
            settings: progress.settings.clone(),
            layer,
            record: record.clone(),
            times_computed,
        }
    }

    /// Writes it atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("layer record serialises");
        write_file(dir, &layer_record_path(self.layer), &json).map(|_| ())
    }

    /// `template` (the run now asked for) with this record's identity, for comparing them.
    pub fn as_progress(&self, template: &Progress) -> Progress {
        let mut progress = template.clone();
        progress.model_fingerprint = self.model_fingerprint.clone();
        progress.weight_digests = self.weight_digests.clone();
        progress.model_name = self.model_name.clone();
        progress.data_fingerprint = self.data_fingerprint.clone();
        progress.data_name = self.data_name.clone();
        progress.settings = self.settings.clone();
        progress
    }
}

/// The layer records in `dir/layers` that parse, by layer.
pub fn read_layer_records(dir: &Path) -> BTreeMap<usize, LayerSelfRecord> {
    let mut records = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join("layers")) else {
        return records;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(layer) = name
            .strip_prefix("layer_")
            .and_then(|rest| rest.strip_suffix(".record.json"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let parsed = std::fs::read(entry.path())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<LayerSelfRecord>(&bytes).ok())
            .filter(|r| r.kind == RECORD_KIND && r.layer == layer);
        if let Some(record) = parsed {
            records.insert(layer, record);
        }
    }
    records
}

/// Layers of `dir` whose own records can be read (what a lost progress.json leaves).
pub fn recorded_layers(dir: &Path) -> Vec<usize> {
    read_layer_records(dir).into_keys().collect()
}
