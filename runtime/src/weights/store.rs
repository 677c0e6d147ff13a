//! Memory-mapped safetensors: one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`. Only headers are read when opening; tensor bytes are
//! touched when a layer asks for them.

use super::dtype::{convert_to_f32, is_float_weight};
use super::header::read_header;
use crate::error::{Result, RuntimeError};
use layerstream_planner::format::{TensorBytes, TensorRef, WeightFormat};
use layerstream_planner::{Inventory, TensorEntry};
use memmap2::Mmap;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// The weights of a model folder, mapped but not read.
pub struct WeightStore {
    model_dir: PathBuf,
    inventory: Inventory,
    maps: Vec<Mmap>,
    index_by_name: HashMap<String, usize>,
}

impl WeightStore {
    /// Maps the safetensors files of `model_dir` and builds the inventory from their headers.
    pub fn open(model_dir: &Path) -> Result<Self> {
        let (files, weight_map) = weight_files(model_dir)?;
        let mut maps = Vec::with_capacity(files.len());
        let mut tensors = Vec::new();
        for (file_index, path) in files.iter().enumerate() {
            if path.is_dir() {
                return Err(RuntimeError::Safetensors {
                    path: path.clone(),
                    message:
                        "is a folder, not a safetensors file; put the model's weights file there"
                            .into(),
                });
            }
            let file = File::open(path).map_err(|e| RuntimeError::io("cannot open", path, e))?;
            // SAFETY: the file is opened read-only; a checkpoint changed underneath a running
            // analysis is outside what any loader can defend against.
            let map =
                unsafe { Mmap::map(&file) }.map_err(|e| RuntimeError::io("cannot map", path, e))?;
            crate::mapping_guard::register(
                map.as_ptr(),
                map.len(),
                path,
                "the model file changed or was truncated while layerstream read it (its memory mapping lost its backing); put the original file back and run the same command again: finished layers are kept",
            );
            tensors.extend(read_header(path, &map, file_index)?);
            maps.push(map);
        }
        let mut seen = HashMap::new();
        for tensor in &tensors {
            if let Some(other) = seen.insert(tensor.name.clone(), tensor.file_index) {
                return Err(RuntimeError::Safetensors {
                    path: files[tensor.file_index].clone(),
                    message: format!(
                        "tensor {} is also stored in {}; a checkpoint must store each tensor once",
                        tensor.name,
                        files[other].display()
                    ),
                });
            }
        }
        check_weight_map(&weight_map, &files, &tensors)?;
        let inventory = Inventory::new(files, tensors);
        let index_by_name = inventory
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(WeightStore {
            model_dir: model_dir.to_path_buf(),
            inventory,
            maps,
            index_by_name,
        })
    }

    /// Before `layer` is loaded: refuses to go on when a weight file no longer has the
    /// length it was mapped with (truncated or replaced during the run; reading it would
    /// fault). `LAYERSTREAM_FAULT_TRUNCATE` cuts the file here in tests.
    pub fn check_unchanged(&self, layer: usize) -> Result<()> {
        if crate::mapping_guard::truncate_for_test(self, layer) {
            return Ok(());
        }
        for (index, map) in self.maps.iter().enumerate() {
            crate::mapping_guard::check_length(self.file_path(index), map.len())?;
        }
        Ok(())
    }

    /// The folder the weights came from.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// Every tensor, from the headers.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index_by_name.contains_key(name)
    }

    /// The inventory entry of a tensor, or a MissingTensor error with `hint`.
    pub fn entry(&self, name: &str, hint: &str) -> Result<&TensorEntry> {
        self.index_by_name
            .get(name)
            .map(|&i| &self.inventory.tensors[i])
            .ok_or_else(|| RuntimeError::MissingTensor {
                name: name.to_string(),
                model_dir: self.model_dir.clone(),
                hint: hint.to_string(),
            })
    }

    /// Path of the inventory's file `index`.
    pub fn file_path(&self, index: usize) -> &Path {
        &self.inventory.files[index]
    }

    /// Path of the file holding a tensor.
    pub fn file_of(&self, entry: &TensorEntry) -> &Path {
        &self.inventory.files[entry.file_index]
    }

    /// Checks that a tensor exists with the shape config.json implies and a float dtype.
    pub fn check(&self, name: &str, expected: &[usize], reason: &str) -> Result<&TensorEntry> {
        let entry = self.entry(name, reason)?;
        if entry.shape != expected {
            return Err(RuntimeError::ShapeMismatch {
                name: name.to_string(),
                path: self.file_of(entry).to_path_buf(),
                expected: expected.to_vec(),
                found: entry.shape.clone(),
                reason: reason.to_string(),
            });
        }
        if !is_float_weight(entry.dtype) {
            return Err(RuntimeError::UnsupportedDtype {
                name: name.to_string(),
                path: self.file_of(entry).to_path_buf(),
                dtype: entry.dtype.name().to_string(),
            });
        }
        Ok(entry)
    }

    /// The stored bytes of a tensor (pages are read from disk as they are touched).
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        let start = entry.byte_offset as usize;
        &self.maps[entry.file_index][start..start + entry.byte_len as usize]
    }

    /// A whole tensor converted to f32, laid out as stored (row-major).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let entry = self.entry(name, "needed by the forward pass")?;
        let mut out = vec![0f32; entry.numel()];
        convert_to_f32(entry.dtype, self.bytes(entry), &mut out);
        Ok(out)
    }

    /// A layer weight converted to f32 (a whole tensor, its slice of a stacked one, or an
    /// MXFP4 or FP8 matrix dequantized).
    pub fn read_ref_f32(&self, source: &TensorRef) -> Result<Vec<f32>> {
        if let TensorRef::Quantized {
            format: WeightFormat::Mxfp4,
            values,
            scales,
        } = source
        {
            return super::mxfp4::read_f32(self, values, scales);
        }
        if let TensorRef::Quantized {
            format:
                WeightFormat::Fp8 {
                    block_rows,
                    block_cols,
                },
            values,
            scales,
        } = source
        {
            return super::fp8::read_f32(self, (values, scales), (*block_rows, *block_cols));
        }
        let ranges = self.ranges(source)?;
        let mut out = Vec::new();
        for (entry, range) in ranges {
            let element = entry.dtype.size_bytes().unwrap_or(1);
            let bytes =
                &self.bytes(entry)[range.offset as usize..(range.offset + range.len) as usize];
            let start = out.len();
            out.resize(start + bytes.len() / element, 0f32);
            convert_to_f32(entry.dtype, bytes, &mut out[start..]);
        }
        Ok(out)
    }

    /// The stored byte ranges of a layer weight, each with the tensor it is in (a quantized
    /// matrix is refused: the GPU path has no dequantizer yet; the CPU reads MXFP4 through
    /// [`Self::read_ref_f32`]).
    pub fn ranges<'a>(
        &'a self,
        source: &'a TensorRef,
    ) -> Result<Vec<(&'a TensorEntry, TensorBytes<'a>)>> {
        if let TensorRef::Quantized { format, .. } = source {
            return Err(RuntimeError::UnsupportedDtype {
                name: source.name().to_string(),
                path: self.model_dir.clone(),
                dtype: format!("{format:?}"),
            });
        }
        let byte_len = |name: &str| {
            self.index_by_name
                .get(name)
                .map(|&i| self.inventory.tensors[i].byte_len)
        };
        let ranges = source
            .byte_ranges(&byte_len)
            .ok_or_else(|| RuntimeError::MissingTensor {
                name: source.name().to_string(),
                model_dir: self.model_dir.clone(),
                hint: "needed by the forward pass".into(),
            })?;
        ranges
            .into_iter()
            .map(|r| Ok((self.entry(r.name, "needed by the forward pass")?, r)))
            .collect()
    }

    /// Checks a layer weight as [`Self::check`] does: a whole tensor of `expected` shape, or
    /// a stacked tensor `[count, total_rows, ..]` holding `expected` as a slice.
    pub fn check_ref(&self, source: &TensorRef, expected: &[usize], reason: &str) -> Result<()> {
        match source {
            TensorRef::Whole(name) => self.check(name, expected, reason).map(|_| ()),
            TensorRef::Stacked {
                name,
                count,
                total_rows,
                ..
            } => {
                let mut stacked = vec![*count, *total_rows];
                stacked.extend(expected.iter().skip(1));
                self.check(name, &stacked, reason).map(|_| ())
            }
            TensorRef::Quantized {
                format: WeightFormat::Mxfp4,
                values,
                scales,
            } => super::mxfp4::check(self, (values, scales), expected, reason),
            TensorRef::Quantized {
                format:
                    WeightFormat::Fp8 {
                        block_rows,
                        block_cols,
                    },
                values,
                scales,
            } => super::fp8::check(
                self,
                (values, scales),
                (*block_rows, *block_cols),
                expected,
                reason,
            ),
            TensorRef::Quantized { .. } => self.ranges(source).map(|_| ()),
        }
    }

    /// Writes the embedding row of each token into `hidden (tokens, hidden_size)`, rows
    /// gathered on the CPU's threads.
    pub fn embed_tokens(
        &self,
        embedding: &TensorEntry,
        token_ids: &[u32],  // (tokens)
        hidden: &mut [f32], // (tokens, hidden_size)
    ) -> Result<()> {
        let (vocab, width) = (embedding.shape[0], embedding.shape[1]);
        if let Some(&token) = token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(RuntimeError::InvalidRequest(format!(
                "token id {token} is outside the embedding {} of {vocab} rows; the tokenizer does not belong to this model",
                embedding.name
            )));
        }
        let threads = crate::cpu::threads::default_thread_count();
        let rows_per_chunk = token_ids.len().div_ceil(4 * threads).max(64);
        let rows = &mut hidden[..token_ids.len() * width];
        crate::cpu::threads::for_each_chunk_mut(
            rows,
            rows_per_chunk * width,
            threads,
            |i, chunk| {
                let tokens = &token_ids[i * rows_per_chunk..];
                for (&token, row) in tokens.iter().zip(chunk.chunks_exact_mut(width)) {
                    self.read_rows_f32(embedding, token as usize, row);
                }
            },
        );
        Ok(())
    }

    /// Rows `first_row..first_row + out.len() / row_len` of a 2-D tensor, as f32.
    pub fn read_rows_f32(&self, entry: &TensorEntry, first_row: usize, out: &mut [f32]) {
        let row_len = entry.shape[1];
        let element_bytes = entry.dtype.size_bytes().expect("float dtype");
        let start = first_row * row_len * element_bytes;
        let bytes = &self.bytes(entry)[start..start + out.len() * element_bytes];
        convert_to_f32(entry.dtype, bytes, out);
    }
}

/// The safetensors files of a model folder, from the index if there is one.
impl Drop for WeightStore {
    fn drop(&mut self) {
        for map in &self.maps {
            crate::mapping_guard::unregister(map.as_ptr());
        }
    }
}

/// The index's `weight_map`: its path and (tensor, shard file name) pairs.
type WeightMap = Option<(PathBuf, Vec<(String, String)>)>;

/// Every tensor the index maps to a shard is in that shard.
fn check_weight_map(
    weight_map: &WeightMap,
    files: &[PathBuf],
    tensors: &[TensorEntry],
) -> Result<()> {
    let Some((index_path, entries)) = weight_map else {
        return Ok(());
    };
    let held: HashMap<&str, usize> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.file_index))
        .collect();
    for (tensor, shard) in entries {
        let listed = files
            .iter()
            .position(|f| f.file_name().is_some_and(|n| n == shard.as_str()));
        let actual = held.get(tensor.as_str()).copied();
        if listed.is_some() && actual != listed {
            let where_it_is = match actual {
                Some(index) => format!("it is in {}", files[index].display()),
                None => "no shard holds it".to_string(),
            };
            return Err(RuntimeError::Safetensors {
                path: index_path.clone(),
                message: format!(
                    "maps tensor {tensor} to {shard}, which does not hold it ({where_it_is}); the index and the shards come from different downloads: fetch them again together"
                ),
            });
        }
    }
    Ok(())
}

fn weight_files(model_dir: &Path) -> Result<(Vec<PathBuf>, WeightMap)> {
    let index_path = model_dir.join(INDEX_FILE);
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| RuntimeError::io("cannot read", &index_path, e))?;
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| RuntimeError::Safetensors {
                path: index_path.clone(),
                message: format!("not valid JSON: {e}"),
            })?;
        let weight_map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| RuntimeError::Safetensors {
                path: index_path.clone(),
                message: "has no `weight_map` object mapping tensor names to shard files".into(),
            })?;
        let mut shards = BTreeSet::new();
        let mut entries = Vec::with_capacity(weight_map.len());
        for (tensor, file) in weight_map {
            let file = file.as_str().ok_or_else(|| RuntimeError::Safetensors {
                path: index_path.clone(),
                message: format!("weight_map entry for {tensor} is not a file name"),
            })?;
            shards.insert(file.to_string());
            entries.push((tensor.clone(), file.to_string()));
        }
        let files: Vec<PathBuf> = shards.into_iter().map(|f| model_dir.join(f)).collect();
        for file in &files {
            if !file.exists() {
                return Err(RuntimeError::Safetensors {
                    path: index_path.clone(),
                    message: format!(
                        "lists shard {} which does not exist; copy the missing shard into the folder",
                        file.display()
                    ),
                });
            }
        }
        return Ok((files, Some((index_path, entries))));
    }
    let single = model_dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok((vec![single], None));
    }
    Err(RuntimeError::Safetensors {
        path: model_dir.to_path_buf(),
        message: format!(
            "no {SINGLE_FILE} and no {INDEX_FILE}; --model must be a folder saved by transformers with safetensors weights"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;

    /// A folder with `model.safetensors` holding a stacked `[4, 6, 8]` f32 tensor whose
    /// value at (e, r, c) is `100 e + 10 r + c`.
    fn stacked_model() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<u8> = (0..4 * 6 * 8)
            .flat_map(|i| {
                let (e, r, c) = (i / 48, i / 8 % 6, i % 8);
                ((100 * e + 10 * r + c) as f32).to_le_bytes()
            })
            .collect();
        let view = TensorView::new(Dtype::F32, vec![4, 6, 8], &values).unwrap();
        let bytes = safetensors::serialize([("experts.gate_up", view)], None).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
        dir
    }

    #[test]
    fn a_stacked_slice_reads_its_expert_rows_and_checks_the_stacked_shape() {
        let dir = stacked_model();
        let store = WeightStore::open(dir.path()).unwrap();
        // Expert 2's "up" rows: rows 3..6 of its [6, 8] slice.
        let up = TensorRef::Stacked {
            name: "experts.gate_up".into(),
            index: 2,
            count: 4,
            rows: 3..6,
            total_rows: 6,
        };
        let values = store.read_ref_f32(&up).unwrap();
        let expect: Vec<f32> = (3..6)
            .flat_map(|r| (0..8).map(move |c| (200 + 10 * r + c) as f32))
            .collect();
        assert_eq!(values, expect);
        store.check_ref(&up, &[3, 8], "test").unwrap();
        let wrong = store.check_ref(&up, &[3, 7], "test").unwrap_err();
        assert!(wrong.to_string().contains("[4, 6, 7]"), "{wrong}");
    }

    #[test]
    fn a_quantized_weight_is_not_read_as_byte_ranges_and_its_shape_is_checked() {
        let dir = stacked_model();
        let store = WeightStore::open(dir.path()).unwrap();
        let quantized = TensorRef::Quantized {
            format: WeightFormat::Fp8 {
                block_rows: 128,
                block_cols: 128,
            },
            values: Box::new(TensorRef::Whole("experts.gate_up".into())),
            scales: Box::new(TensorRef::Whole("experts.gate_up".into())),
        };
        // The GPU stages a quantized matrix's values and scales separately, never as one.
        let error = store.ranges(&quantized).unwrap_err();
        assert!(error.to_string().contains("Fp8"), "{error}");
        let error = store.check_ref(&quantized, &[6, 8], "test").unwrap_err();
        assert!(
            error.to_string().contains("experts.gate_up")
                && error.to_string().contains("[4, 6, 8]"),
            "{error}"
        );
    }
}
