//! Command-line interface. Flags mean the same in every command that takes them.

use crate::commands::shard::ShardArg;
use clap::{Args, Parser, Subcommand};
use layerstream_planner::ByteSize;
use layerstream_runtime::DeviceChoice;
use layerstream_runtime::checkpoint::activations::ActivationDtype;
use layerstream_runtime::cuda::ComputeChoice;
use std::path::PathBuf;

/// Analyse the activations of language models larger than your GPU, one layer at a time.
#[derive(Debug, Parser)]
#[command(name = "layerstream", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
// One value, parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run a workload through the model layer by layer and report activation statistics
    /// (max |x|, values at or above the threshold, top dimensions) per layer and capture point.
    Analyze(AnalyzeArgs),
    /// Mean negative log-likelihood and perplexity of the workload, per sequence and overall.
    Score(ScoreArgs),
    /// Describe a model from its config.json and safetensors headers, without reading weights.
    Inspect(InspectArgs),
    /// Estimate a run's device memory and time from the model's headers, before renting a
    /// GPU: per-layer table, micro-batch, where hidden states live, peak against --vram.
    Estimate(EstimateArgs),
    /// One table (and plot) over several analysis output folders: model, parameters,
    /// outlier dimensions, mean layer and position fractions, max |x|, classification,
    /// massive activations.
    Compare(CompareArgs),
    /// Where an analysis output folder stands: layers done and remaining, settings, whether
    /// its files are intact and the run can continue.
    Status(StatusArgs),
    /// Join the output folders of `--shard` runs of one analysis into the folder and report
    /// one run over all their sequences writes (report.json byte for byte).
    Merge(MergeArgs),
}

/// `--model`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model folder saved by transformers: config.json, tokenizer.json and model.safetensors
    /// (or model.safetensors.index.json with its shards). Default: the small model embedded in
    /// layerstream.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// With --model ORG/NAME: fetch what the command needs into the Hugging Face cache when
    /// it is not there (a run: config, tokenizer and weights; inspect and estimate: config
    /// and the safetensors headers only), resuming partial files; HF_ENDPOINT and HF_TOKEN
    /// apply. Also LAYERSTREAM_DOWNLOAD=1.
    #[arg(long)]
    pub download: bool,
}

/// The workload: data file and how it is packed.
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Text to run: .txt (one document), .jsonl (one JSON object per line) or .parquet
    /// (e.g. fineweb-edu shards). Default: the text embedded in layerstream.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Field (.jsonl) or column (.parquet) that holds the text.
    #[arg(long, value_name = "NAME", default_value = "text")]
    pub text_field: String,
    /// Number of sequences to pack from the data.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = parse_count)]
    pub num_samples: usize,
    /// Tokens per sequence (at most the model's max_position_embeddings). Every sequence
    /// starts with the tokens the tokenizer puts before a text (BOS for Llama-style ones).
    #[arg(long, value_name = "T", default_value_t = 2048, value_parser = parse_count)]
    pub seq_len: usize,
    /// Run one contiguous range of the packed sequences: I/N (zero-based shard I of N;
    /// shard i of S sequences holds floor(i S / N) .. floor((i + 1) S / N)), or `env`
    /// (`env/N`) to take them from SLURM_ARRAY_TASK_ID / _COUNT (or _MIN / _MAX),
    /// JOB_COMPLETION_INDEX (Kubernetes, with N) or SKYPILOT_NODE_RANK / _NUM_NODES.
    #[arg(long, value_name = "I/N|env")]
    pub shard: Option<ShardArg>,
}

/// Where and how the forward pass runs.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Backend: auto (CUDA when usable, else CPU), cpu, or cuda.
    #[arg(long, value_name = "DEVICE", default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// GEMM and attention arithmetic on a GPU: auto (bf16 for bf16 checkpoints on GPUs
    /// with bf16 arithmetic; f16 for bf16 and f16 checkpoints on T4s and other sm_75 GPUs;
    /// else f32), bf16, f16 (f16 tensor cores with f32 accumulation; values beyond f16's
    /// range are recomputed in f32 and counted), or f32 (works on any GPU).
    #[arg(long, value_name = "DTYPE", default_value = "auto", value_parser = parse_compute)]
    pub compute_dtype: ComputeChoice,
    /// CPU threads (default: LAYERSTREAM_THREADS, else all cores).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub threads: Option<usize>,
    /// Tokens per micro-batch: sequences go through a layer in groups of about this many
    /// tokens (default 8192; with --vram the plan takes the largest that fits up to 65536:
    /// larger GEMMs, each expert of a MoE layer sees more rows).
    #[arg(long, value_name = "TOKENS", value_parser = parse_count)]
    pub micro_batch_tokens: Option<usize>,
    /// Output folder; created if missing.
    #[arg(long, value_name = "DIR", default_value = "layerstream-out")]
    pub out: PathBuf,
    /// Progress on stderr: auto (a bar on a terminal, else lines), bar, lines (one line per
    /// finished layer and at least every 30 s inside a long one), json (one object per event)
    /// or none.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_progress)]
    pub progress: crate::progress::ProgressMode,
}

fn parse_device(text: &str) -> Result<DeviceChoice, String> {
    text.parse()
}

fn parse_progress(text: &str) -> Result<crate::progress::ProgressMode, String> {
    text.parse()
}

fn parse_compute(text: &str) -> Result<ComputeChoice, String> {
    text.parse()
}

/// A count of at least 1 (sequences, tokens, threads), at most 2^32.
/// `--save-tokens`: all positions, or this many per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveTokens(pub Option<usize>);

fn parse_save_tokens(text: &str) -> Result<SaveTokens, String> {
    match text.trim() {
        "all" => Ok(SaveTokens(None)),
        n => parse_count(n).map(|n| SaveTokens(Some(n))),
    }
}

fn parse_activation_dtype(text: &str) -> Result<ActivationDtype, String> {
    match text.trim() {
        "f32" => Ok(ActivationDtype::F32),
        "bf16" => Ok(ActivationDtype::Bf16),
        other => Err(format!(
            "{other:?} is not an activation type: write f32 or bf16"
        )),
    }
}

fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) if n > 1 << 32 => Err(format!("{n} is more than this tool handles (at most 2^32)")),
        Ok(n) => Ok(n as usize),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// A finite number, or why not.
fn parse_finite(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("{text} is not a finite number"))
    }
}

/// `--threshold`: positive and representable in f32.
fn parse_threshold(text: &str) -> Result<f32, String> {
    let value = parse_finite(text)?;
    if value <= 0.0 || value > f32::MAX as f64 {
        return Err(format!(
            "{text} must be a positive number no larger than {:e}",
            f32::MAX
        ));
    }
    Ok(value as f32)
}

/// Seconds: 0 or more, at most a year.
fn parse_seconds(text: &str) -> Result<f64, String> {
    let value = parse_finite(text)?;
    if !(0.0..=3.2e7).contains(&value) {
        return Err(format!(
            "{text} must be between 0 and 3.2e7 seconds (a year)"
        ));
    }
    Ok(value)
}

/// A bandwidth or throughput the estimate divides by: positive.
fn parse_rate(text: &str) -> Result<f64, String> {
    let value = parse_finite(text)?;
    if value <= 0.0 {
        return Err(format!("{text} must be a positive number"));
    }
    Ok(value)
}

/// Bootstrap resamples: at most 100,000 (the intervals settle long before).
fn parse_resamples(text: &str) -> Result<usize, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 100_000 => Err(format!(
            "{n} is more than 100000 resamples; 1000 to 10000 give stable 95% intervals"
        )),
        Ok(n) => Ok(n as usize),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// `layerstream analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub records: RecordArgs,
    /// Layers to analyse: all, a list (0,6,11), a range (0-11) or a mix (0-3,8).
    #[arg(long, value_name = "LAYERS", default_value = "all")]
    pub layers: String,
    /// Capture points: all (every one but q and k), or a list of ln1, q, k, attn_in_o,
    /// attn_sinks, attn_out, ln2, mlp_out, resid_post, router.
    #[arg(long, value_name = "POINTS", default_value = "all")]
    pub points: String,
    /// Magnitude counted as an outlier value (|x| >= threshold; LLM.int8() uses 6).
    #[arg(long, value_name = "X", default_value_t = 6.0, value_parser = parse_threshold)]
    pub threshold: f32,
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Print the plan (as `layerstream estimate` does) and stop.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub resume: ResumeArgs,
    /// Keep every hidden-state checkpoint in OUT/hidden/, not only the latest.
    #[arg(long)]
    pub keep_hidden: bool,
    /// Bootstrap resamples of the sequences for the report's intervals and selection
    /// probabilities (0: none).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = parse_resamples)]
    pub bootstrap: usize,
    /// Seed of the bootstrap resamples.
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub seed: u64,
    /// Disjoint batches of sequences whose outlier sets are compared (Jaccard overlap;
    /// needs at least as many sequences; below 2: none).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub batches: usize,
    /// Also write the raw activations of these points (all, or a list) into OUT/activations/:
    /// per layer and point, rows of (token, width) values in safetensors shards with each
    /// row's token id, sequence and position, and index.json listing them (for training an
    /// SAE). Large: tokens x width x 4 bytes per point and layer in f32.
    #[arg(long, value_name = "POINTS", num_args = 0..=1, default_missing_value = "all")]
    pub save_activations: Option<String>,
    /// Element type of the saved activations: f32 (as computed) or bf16 (each value rounded
    /// to the nearest bf16, as torch rounds; half the bytes).
    #[arg(long, value_name = "TYPE", default_value = "f32", value_parser = parse_activation_dtype, requires = "save_activations")]
    pub activation_dtype: ActivationDtype,
    /// Token positions saved per sequence: all, or a sample of N drawn with --seed (the same
    /// positions at every layer and point).
    #[arg(long, value_name = "N", default_value = "all", value_parser = parse_save_tokens, requires = "save_activations")]
    pub save_tokens: SaveTokens,
    /// Largest activation file: a layer and point's rows are split into shards of at most
    /// this size (each named in OUT/activations/index.json).
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "2GiB",
        requires = "save_activations"
    )]
    pub shard_bytes: ByteSize,
    /// Run on several GPUs of this host: one shard process per GPU (0,1 or all), each with
    /// its own CUDA_VISIBLE_DEVICES and part of --ram, started again if it dies, merged into
    /// --out at the end (shard folders in OUT/shards/).
    #[arg(long, value_name = "GPUS")]
    pub devices: Option<String>,
}

/// What the planner needs besides the model (shared by `estimate` and `analyze`).
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Device memory budget, e.g. 8GiB, 8GB, 8192MiB, 0.5TiB. The run is planned to stay
    /// inside it (micro-batch size, where hidden states live) and refused if it cannot.
    #[arg(long, value_name = "SIZE")]
    pub vram: Option<ByteSize>,
    /// Host memory budget. On the CPU backend: its regions (hidden states, a layer's weights
    /// in f32, micro-batch buffers); past it the micro-batch halves, a layer splits, the
    /// hidden states move to a file in the output folder. With --vram: the pinned host
    /// memory the plan may use for the hidden states before it puts them in a file. Default
    /// with --vram: 80% of the memory this machine has available now.
    #[arg(long, value_name = "SIZE")]
    pub ram: Option<ByteSize>,
    /// CUDA context, cuBLAS and kernel modules, counted in the budget (0.61 GiB measured on
    /// an H200 with CUDA 13.0).
    #[arg(long, value_name = "SIZE", default_value = "640MiB")]
    pub overhead: ByteSize,
    /// Pinned host-to-device bandwidth the time estimate assumes, GB/s (H200: 55, T4: 12).
    #[arg(long, value_name = "GBPS", default_value_t = 55.0, value_parser = parse_rate)]
    pub h2d_gbps: f64,
    /// Disk read bandwidth for a cold page cache, GB/s.
    #[arg(long, value_name = "GBPS", default_value_t = 1.6, value_parser = parse_rate)]
    pub disk_gbps: f64,
    /// Arithmetic throughput layerstream sustains, TFLOP/s (27 measured on the H200 for the
    /// OLMoE-1B-7B shape).
    #[arg(long, value_name = "TFLOPS", default_value_t = 25.0, value_parser = parse_rate)]
    pub tflops: f64,
}

/// `layerstream estimate`.
#[derive(Debug, Args)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Number of sequences.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = parse_count)]
    pub num_samples: usize,
    /// Tokens per sequence.
    #[arg(long, value_name = "T", default_value_t = 2048, value_parser = parse_count)]
    pub seq_len: usize,
    /// Layers to analyse: all, a list (0,6,11), a range (0-11) or a mix (0-3,8).
    #[arg(long, value_name = "LAYERS", default_value = "all")]
    pub layers: String,
    /// Capture points: all (every one but q and k), or a list of ln1, q, k, attn_in_o,
    /// attn_sinks, attn_out, ln2, mlp_out, resid_post, router.
    #[arg(long, value_name = "POINTS", default_value = "all")]
    pub points: String,
    /// Plan `score` (final norm and LM head) instead of `analyze`.
    #[arg(long)]
    pub score: bool,
    /// GEMM arithmetic: auto (bf16 for bf16 checkpoints, as on a GPU with bf16 arithmetic),
    /// bf16, f16 (a T4's tensor cores: bf16 checkpoints converted to f16), or f32.
    #[arg(long, value_name = "DTYPE", default_value = "auto", value_parser = parse_compute)]
    pub compute_dtype: ComputeChoice,
    /// Tokens per micro-batch to aim for; the plan takes the largest that fits, up to this
    /// (default 65536).
    #[arg(long, value_name = "TOKENS", value_parser = parse_count)]
    pub micro_batch_tokens: Option<usize>,
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Print JSON (schema: docs/estimate-json.md).
    #[arg(long)]
    pub json: bool,
}

/// `layerstream compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Output folders of `layerstream analyze` (each with report.json).
    #[arg(value_name = "OUT", required = true, num_args = 1..)]
    pub outs: Vec<PathBuf>,
    /// Where to write compare.md, compare.json and the combined plots.
    #[arg(long, value_name = "DIR", default_value = "layerstream-compare")]
    pub out: PathBuf,
}

/// `layerstream status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// An output folder of `layerstream analyze`.
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
}

/// `layerstream merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Output folders of the shards (or of earlier merges), in any order.
    #[arg(value_name = "SHARD_OUT", required = true)]
    pub shards: Vec<PathBuf>,
    /// Folder for the merged results and report.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Merge the layers every shard has finished, leaving the others out.
    #[arg(long)]
    pub partial: bool,
    /// The model the shards ran, for its tokenizer (default: the one they record).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
}

/// One sequence per record (`analyze`, `score`).
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Each record (a .jsonl line, a .parquet row, a .txt line with --txt-lines) is a
    /// sequence of its own length, never packed or padded (--num-samples and --seq-len do
    /// not apply); score writes OUT/scores.jsonl, one line per record in input order.
    #[arg(long)]
    pub per_record: bool,
    /// With --per-record: each non-blank line of a .txt file (or standard input) is a record.
    #[arg(long, requires = "per_record")]
    pub txt_lines: bool,
    /// With --per-record: records longer than this keep their first tokens and are flagged
    /// truncated (default: the model's max_position_embeddings).
    #[arg(long, value_name = "TOKENS", value_parser = parse_count, requires = "per_record")]
    pub max_length: Option<usize>,
}

/// `layerstream score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub records: RecordArgs,
    /// With --per-record: the field holding the prompt; only the completion's tokens are
    /// scored, given it.
    #[arg(long, value_name = "NAME", requires_all = ["per_record", "completion_field"])]
    pub prompt_field: Option<String>,
    /// With --per-record: the field holding the completion scored given the prompt (or given
    /// the record's `messages`).
    #[arg(long, value_name = "NAME", requires = "per_record")]
    pub completion_field: Option<String>,
    /// With --per-record: a field copied to each output line as the record's id.
    #[arg(long, value_name = "NAME", requires = "per_record")]
    pub id_field: Option<String>,
    /// With --per-record: the chat template for records with a `messages` field, or for the
    /// prompt as a user turn (generation prompt added; the rendered text is in the output):
    /// auto (the model's chat_template.jinja or tokenizer_config.json's, if it has one), none,
    /// or a Jinja file.
    #[arg(
        long,
        value_name = "auto|none|FILE",
        default_value = "auto",
        requires = "per_record"
    )]
    pub chat_template: crate::chat_template::TemplateChoice,
    /// With --per-record: also the K most likely next tokens (id, string, log-probability)
    /// at the last prompt position (the last token without a completion).
    #[arg(long, value_name = "K", default_value_t = 0, requires = "per_record")]
    pub top_logprobs: usize,
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Print the plan (as `layerstream estimate --score` does) and stop.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub resume: ResumeArgs,
}

/// How a run keeps its work for a resume (`analyze`, `score`).
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Delete what an earlier run left in --out and start over (otherwise the same command
    /// continues an interrupted run, and a different one is refused).
    #[arg(long)]
    pub restart: bool,
    /// Seconds between hidden-state checkpoints (0: after every layer). Layer results are
    /// recorded after every layer; a resumed run starts from the latest hidden states and
    /// runs the layers after them forward again without recomputing their results.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = parse_seconds)]
    pub checkpoint_every: f64,
}

/// `layerstream inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    /// `--micro-batch-tokens` of a run without a plan (default: the CPU's 8192).
    pub fn micro_batch_tokens(&self) -> usize {
        self.micro_batch_tokens
            .unwrap_or(layerstream_planner::UNPLANNED_MICRO_BATCH_TOKENS)
    }

    /// `--micro-batch-tokens` a plan aims for (default 65536: the budget decides).
    pub fn planned_micro_batch_tokens(&self) -> usize {
        self.micro_batch_tokens
            .unwrap_or(layerstream_planner::PLANNED_MICRO_BATCH_TOKENS)
    }
}
