//! Raw activations, only when asked for (`--save-activations`): per layer and point,
//! `activations/layer_{l}_{point}.safetensors` with `activations` F32 `(sequences, seq_len,
//! width)` and `token_ids` U32 `(sequences, seq_len)`, metadata layer, point, shape. Loadable
//! with `safetensors.numpy.load_file`. Each file is written in place as micro-batches
//! arrive (it may be larger than memory) under a temporary name, renamed when the layer is
//! done.

use crate::capture::CapturePoint;
use crate::error::{Result, RuntimeError};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Writes the activation files of the requested points.
pub struct ActivationSaver {
    dir: PathBuf,
    points: Vec<CapturePoint>,
    token_ids: Vec<u32>,
    sequences: usize,
    seq_len: usize,
    open: BTreeMap<CapturePoint, OpenFile>,
}

struct OpenFile {
    file: File,
    temp: PathBuf,
    path: PathBuf,
    data_start: u64,
    width: usize,
}

/// The final path of a layer's activations at `point`.
pub fn activation_path(dir: &Path, layer: usize, point: CapturePoint) -> PathBuf {
    dir.join("activations")
        .join(format!("layer_{layer}_{point}.safetensors"))
}

impl ActivationSaver {
    /// A saver for `points` of a workload of `token_ids (sequences, seq_len)` into `dir`.
    pub fn new(dir: &Path, points: Vec<CapturePoint>, token_ids: Vec<u32>, seq_len: usize) -> Self {
        ActivationSaver {
            dir: dir.to_path_buf(),
            points,
            sequences: token_ids.len() / seq_len.max(1),
            token_ids,
            seq_len,
            open: BTreeMap::new(),
        }
    }

    fn create(&self, layer: usize, point: CapturePoint, width: usize) -> Result<OpenFile> {
        let path = activation_path(&self.dir, layer, point);
        let folder = path.parent().expect("in activations/");
        std::fs::create_dir_all(folder)
            .map_err(|e| RuntimeError::io("cannot create", folder, e))?;
        let temp = folder.join(format!(".layer_{layer}_{point}.tmp"));
        let (n, t) = (self.sequences, self.seq_len);
        let values = (n * t * width * 4) as u64;
        let header = format!(
            r#"{{"__metadata__":{{"layer":"{layer}","point":"{point}","shape":"[{n}, {t}, {width}]","dtype":"float32"}},"activations":{{"dtype":"F32","shape":[{n},{t},{width}],"data_offsets":[0,{values}]}},"token_ids":{{"dtype":"U32","shape":[{n},{t}],"data_offsets":[{values},{}]}}}}"#,
            values + (n * t * 4) as u64
        );
        let mut header = header.into_bytes();
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        let error = |e| RuntimeError::io("cannot write", &temp, e);
        let mut file = File::create(&temp).map_err(error)?;
        file.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(error)?;
        file.write_all(&header).map_err(error)?;
        let data_start = 8 + header.len() as u64;
        file.seek(SeekFrom::Start(data_start + values))
            .map_err(error)?;
        let ids: Vec<u8> = self
            .token_ids
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        file.write_all(&ids).map_err(error)?;
        Ok(OpenFile {
            file,
            temp,
            path,
            data_start,
            width,
        })
    }

    /// Writes `values (sequences * seq_len, width)` of sequences `first_sequence..`.
    pub fn write(
        &mut self,
        layer: usize,
        point: CapturePoint,
        first_sequence: usize,
        values: &[f32],
        width: usize,
    ) -> Result<()> {
        if !self.points.contains(&point) {
            return Ok(());
        }
        if !self.open.contains_key(&point) {
            let file = self.create(layer, point, width)?;
            self.open.insert(point, file);
        }
        let open = self.open.get_mut(&point).expect("opened above");
        let offset = open.data_start + (first_sequence * self.seq_len * open.width * 4) as u64;
        let error = |e| RuntimeError::io("cannot write", &open.temp, e);
        open.file.seek(SeekFrom::Start(offset)).map_err(error)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        open.file.write_all(&bytes).map_err(error)
    }

    /// The layer is done: its files get their final names.
    pub fn finish_layer(&mut self) -> Result<()> {
        for (_, open) in std::mem::take(&mut self.open) {
            open.file
                .sync_all()
                .map_err(|e| RuntimeError::io("cannot write", &open.temp, e))?;
            std::fs::rename(&open.temp, &open.path)
                .map_err(|e| RuntimeError::io("cannot rename", &open.temp, e))?;
        }
        Ok(())
    }
}
