//! The commands, and the setup they share: opening the model, packing the workload,
//! choosing the backend, preparing the output folder.

pub mod activation_dump;
pub mod analyze;
pub mod compare;
pub mod devices;
pub mod estimate;
pub mod expert_sizes;
pub mod inspect;
pub mod merge;
pub mod plots;
pub mod quantized_sizes;
pub mod record_workload;
pub mod report_markdown;
pub mod report_massive;
pub mod score;
pub mod score_per_record;
pub mod score_records;
pub mod score_run;
pub mod shard;
pub mod status;
pub mod svg;

use crate::args::{ModelArgs, RunArgs, WorkloadArgs};
use crate::embedded;
use crate::hub_download::Need;
use anyhow::{Context, Result};
use layerstream_runtime::analysis::report::ReportRecords;
use layerstream_runtime::checkpoint::{FolderLock, WRITE_PROBE_PREFIX};
use layerstream_runtime::data::{PackedTokens, TextTokenizer, pack_documents};
use layerstream_runtime::executor::RunSummary;
use layerstream_runtime::{Backend, DeviceChoice, Model, Sequences, select_backend};
use std::path::{Path, PathBuf};

/// An opened model and the name reports give it.
pub struct NamedModel {
    /// The model.
    pub model: Model,
    /// `--model` as given, or the embedded model's description.
    pub name: String,
}

/// Opens `--model`, or the embedded default; `need`: what the command reads of it (what
/// `--download` fetches).
pub fn open_model(args: &ModelArgs, need: Need) -> Result<NamedModel> {
    let (dir, name) = match &args.model {
        Some(dir) => {
            let download = args.download
                || std::env::var("LAYERSTREAM_DOWNLOAD").is_ok_and(|v| !v.is_empty() && v != "0");
            let found =
                crate::hub_cache::resolve(dir, need, download, |name| std::env::var(name).ok())?;
            (
                found.unwrap_or_else(|| dir.to_path_buf()),
                dir.display().to_string(),
            )
        }
        None => (
            embedded::default_model_dir()?,
            embedded::DEFAULT_MODEL_NAME.to_string(),
        ),
    };
    let model = Model::open(&dir)?;
    Ok(NamedModel { model, name })
}

/// A recorded `--model` as a folder: itself, or a model id's snapshot in the Hugging Face
/// cache (never downloaded).
pub fn model_dir(spec: &Path) -> Result<PathBuf> {
    let found = crate::hub_cache::resolve(spec, Need::Run, false, |name| std::env::var(name).ok())?;
    Ok(found.unwrap_or_else(|| spec.to_path_buf()))
}

/// The packed workload and where it came from.
pub struct Workload {
    /// Token ids and shape (of the shard, with `--shard`); with `--per-record`, every
    /// record's ids one after the other, `seq_len` the longest record.
    pub packed: PackedTokens,
    /// Where each sequence's tokens sit: one length, or each record's own.
    pub rows: Sequences,
    /// With `--per-record`: the records' lengths as the report gives them.
    pub records: Option<ReportRecords>,
    /// `--data` as given, or the embedded text's description.
    pub data_name: String,
    /// The fingerprint of the whole packed data (every shard's the same).
    pub data_fingerprint: String,
    /// With `--shard`: which shard, and its range of the whole data's sequences.
    pub shard: Option<ShardRun>,
}

/// A shard of the packed data.
pub struct ShardRun {
    /// Index, count and where they came from.
    pub shard: shard::Shard,
    /// Its sequences of the whole data.
    pub range: std::ops::Range<usize>,
    /// Sequences of the whole data.
    pub total: usize,
}

impl ShardRun {
    /// `I/N (sequences a..b of S)`, what the run's identity and its lines say.
    pub fn describe(&self) -> String {
        format!(
            "{}/{} (sequences {}..{} of {})",
            self.shard.index, self.shard.count, self.range.start, self.range.end, self.total
        )
    }
}

/// Refuses a workload whose `(sequences * seq_len, width)` f32 values this machine cannot
/// even count in bytes (the memory plan would overflow).
pub fn check_workload_size(sequences: usize, seq_len: usize, width: usize) -> Result<()> {
    let bytes = (sequences as u128) * (seq_len as u128) * (width as u128) * 4;
    if bytes >= 1u128 << 62 {
        anyhow::bail!(
            "--num-samples {sequences} x --seq-len {seq_len}: the hidden states alone would take {bytes} bytes, more than any machine holds; ask for fewer sequences"
        );
    }
    Ok(())
}

/// Tokenizes and packs `--data` (or the embedded text) with the model's tokenizer.
pub fn pack_workload(model: &Model, args: &WorkloadArgs) -> Result<Workload> {
    model.check_seq_len(args.seq_len)?;
    check_workload_size(
        args.num_samples,
        args.seq_len,
        model.spec.hidden_size.max(model.spec.vocab_size),
    )?;
    let (path, data_name): (PathBuf, String) = match &args.data {
        Some(path) => (path.clone(), path.display().to_string()),
        None => (
            embedded::default_data_file()?,
            embedded::DEFAULT_DATA_NAME.to_string(),
        ),
    };
    // The shard's variables are read before any work, so a bad array fails at once.
    let shard = args
        .shard
        .map(|arg| shard::resolve(arg, |name| std::env::var(name).ok()))
        .transpose()?;
    let tokenizer = TextTokenizer::load(&model.dir, &model.config)?;
    let mut packed = pack_documents(
        &path,
        &args.text_field,
        &tokenizer,
        args.num_samples,
        args.seq_len,
    )?;
    let mut data_fingerprint = layerstream_runtime::checkpoint::data_fingerprint(
        &packed.token_ids,
        packed.num_sequences,
        packed.seq_len,
    );
    // A folder or glob: the files' names count too (the same text in other files is other data).
    if let Some(names) = layerstream_runtime::data::DataSource::resolve(&path)?.names() {
        let names = layerstream_planner::progress::sha256_hex(names.join("\n").as_bytes());
        data_fingerprint = format!("{data_fingerprint}+files:{}", &names[..16]);
    }
    let shard = match shard {
        None => None,
        Some(shard) => {
            let total = packed.num_sequences;
            let range = shard.range(total)?;
            let t = packed.seq_len;
            packed.token_ids = packed.token_ids[range.start * t..range.end * t].to_vec();
            packed.num_sequences = range.len();
            let run = ShardRun {
                shard,
                range,
                total,
            };
            eprintln!("shard {} from {}", run.describe(), run.shard.source);
            Some(run)
        }
    };
    Ok(Workload {
        rows: Sequences::uniform(packed.num_sequences, packed.seq_len),
        records: None,
        packed,
        data_name,
        data_fingerprint,
        shard,
    })
}

/// The backend for `--device`, printing one line when `auto` fell back to the CPU.
pub fn choose_backend(args: &RunArgs) -> Result<Backend> {
    let selection = select_backend(args.device, args.compute_dtype, args.threads)
        .with_context(|| format!("--device {}", device_name(args.device)))?;
    if let Some(reason) = selection.fallback_reason {
        eprintln!("{reason}");
    }
    Ok(selection.backend)
}

fn device_name(device: DeviceChoice) -> &'static str {
    match device {
        DeviceChoice::Auto => "auto",
        DeviceChoice::Cpu => "cpu",
        DeviceChoice::Cuda => "cuda",
    }
}

/// One line about the weight uploads of a GPU run (on stderr, with the other progress lines).
pub fn print_transfer(summary: &RunSummary) {
    if let Some(t) = &summary.transfer {
        eprintln!(
            "weights: {:.2} GB in {} uploads; copy engine busy {:.3} s ({:.1} GB/s host to device); waited {:.3} s for the reader",
            t.bytes as f64 / 1e9,
            t.uploads,
            t.copy_seconds,
            t.gigabytes_per_second(),
            t.reader_wait_seconds
        );
    }
    if let Some(peak) = summary.peak_reserved_bytes {
        eprintln!(
            "device memory: the run's regions peaked at {} (without the CUDA context)",
            layerstream_planner::ByteSize(peak)
        );
    }
    if let Some(f16) = summary.f16_overflow {
        eprintln!(
            "f16 compute: {} GEMM rows and {} attention sequences held values beyond f16's range and were recomputed in f32 (the layers computed in this run)",
            f16.gemm_rows, f16.attention_sequences
        );
    }
}

/// Creates the output folder, proves it can be written and takes its lock (refused while
/// another run holds it), before any work starts.
pub fn prepare_out_dir(dir: &Path) -> Result<FolderLock> {
    let hint = "choose a writable folder with --out";
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the output folder {}; {hint}", dir.display()))?;
    let probe = dir.join(format!("{WRITE_PROBE_PREFIX}{}", std::process::id()));
    std::fs::write(&probe, b"ok").with_context(|| {
        format!(
            "cannot write into the output folder {}; {hint}",
            dir.display()
        )
    })?;
    std::fs::remove_file(&probe).ok();
    // One run at a time in a folder: held until the command returns (or the process ends).
    Ok(FolderLock::take(dir)?)
}

/// Sequences per micro-batch for `--micro-batch-tokens`.
pub fn micro_batch_sequences(args: &RunArgs, workload: &Workload) -> usize {
    layerstream_planner::micro_batch_sequences(
        workload.packed.num_sequences,
        workload.packed.seq_len,
        args.micro_batch_tokens(),
    )
}
