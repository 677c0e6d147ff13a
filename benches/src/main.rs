//! Two jobs for the benchmarks:
//!
//! - CPU reference throughput: runs a model layer by layer on packed data at several
//!   micro-batch sizes and prints tokens per second for each. Not a test: numbers depend on
//!   the machine. `layerstream-benches MODEL_DIR DATA_FILE [NUM_SAMPLES] [SEQ_LEN]`
//! - The workload's token ids, packed exactly as `layerstream analyze` packs them, so the
//!   comparison baselines (`scripts/hf_capture.py`) run on the same tokens:
//!   `layerstream-benches tokens MODEL_DIR DATA_FILE NUM_SAMPLES SEQ_LEN OUT` writes
//!   `(NUM_SAMPLES, SEQ_LEN)` little-endian u32.

use layerstream_runtime::CaptureMode;
use layerstream_runtime::Sequences;
use layerstream_runtime::data::{TextTokenizer, pack_documents};
use layerstream_runtime::{
    CapturePoint, DeviceChoice, FinalStage, Model, RunObserver, RunRequest, run, select_backend,
};
use std::path::PathBuf;
use std::time::Instant;

struct Discard;
impl RunObserver for Discard {}

/// Packs `data` with `model`'s tokenizer as `layerstream analyze` does.
fn packed_tokens(
    model: &Model,
    data: &str,
    num_samples: usize,
    seq_len: usize,
) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let tokenizer = TextTokenizer::load(&model.dir, &model.config)?;
    let packed = pack_documents(
        &PathBuf::from(data),
        "text",
        &tokenizer,
        num_samples,
        seq_len,
    )?;
    Ok(packed.token_ids)
}

/// `tokens MODEL_DIR DATA_FILE NUM_SAMPLES SEQ_LEN OUT`.
fn write_tokens(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [model, data, num_samples, seq_len, out] = args else {
        return Err(
            "usage: layerstream-benches tokens MODEL_DIR DATA_FILE NUM_SAMPLES SEQ_LEN OUT".into(),
        );
    };
    let model = Model::open(&PathBuf::from(model))?;
    let ids = packed_tokens(&model, data, num_samples.parse()?, seq_len.parse()?)?;
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    std::fs::write(out, bytes)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("tokens") {
        return write_tokens(&args[1..]);
    }
    if args.len() < 2 {
        eprintln!("usage: layerstream-benches MODEL_DIR DATA_FILE [NUM_SAMPLES] [SEQ_LEN]");
        std::process::exit(2);
    }
    let model = Model::open(&PathBuf::from(&args[0]))?;
    let num_samples = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let seq_len = args.get(3).map_or(Ok(1024), |s| s.parse())?;
    let token_ids = packed_tokens(&model, &args[1], num_samples, seq_len)?;
    let backend = select_backend(DeviceChoice::Cpu, Default::default(), None)?.backend;
    println!(
        "{:>20}  {:>10}  {:>12}",
        "micro-batch (seqs)", "seconds", "tokens/s"
    );
    for micro_batch in [1, 2, 4, num_samples] {
        let request = RunRequest {
            token_ids: token_ids.clone(),
            first_delimiters: Vec::new(),
            sequences: Sequences::uniform(num_samples, seq_len),
            capture_layers: (0..model.spec.num_layers).collect(),
            capture_points: CapturePoint::ALL.to_vec(),
            capture_mode: CaptureMode::Statistics {
                threshold: 6.0,
                save: Default::default(),
            },
            final_stage: FinalStage::None,
            top_logprobs: None,
            head_vocab_rows: None,
            micro_batch_tokens: micro_batch * seq_len,
            start: None,
            checkpoint_hidden_states: false,
            hidden_placement: layerstream_planner::memory::HiddenPlacement::Device,
            spill_dir: None,
            memory_budget: None,
            split_layers: Default::default(),
        };
        let started = Instant::now();
        run(&model, &request, &backend, &mut Discard)?;
        let seconds = started.elapsed().as_secs_f64();
        let tokens = (num_samples * seq_len) as f64;
        println!(
            "{micro_batch:>20}  {seconds:>10.3}  {:>12.0}",
            tokens / seconds
        );
    }
    Ok(())
}
