//! CPU reference throughput: runs a model layer by layer on packed data at several
//! micro-batch sizes and prints tokens per second for each. Not a test: numbers depend on
//! the machine. Usage:
//!
//! `cargo run --release -p layerstream-benches -- MODEL_DIR DATA_FILE [NUM_SAMPLES] [SEQ_LEN]`

use layerstream_runtime::CaptureMode;
use layerstream_runtime::data::{TextTokenizer, pack_documents};
use layerstream_runtime::{
    CapturePoint, DeviceChoice, FinalStage, Model, RunObserver, RunRequest, run, select_backend,
};
use std::path::PathBuf;
use std::time::Instant;

struct Discard;
impl RunObserver for Discard {}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: layerstream-benches MODEL_DIR DATA_FILE [NUM_SAMPLES] [SEQ_LEN]");
        std::process::exit(2);
    }
    let model = Model::open(&PathBuf::from(&args[0]))?;
    let num_samples = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let seq_len = args.get(3).map_or(Ok(1024), |s| s.parse())?;
    let tokenizer = TextTokenizer::load(&model.dir, &model.config)?;
    let packed = pack_documents(
        &PathBuf::from(&args[1]),
        "text",
        &tokenizer,
        num_samples,
        seq_len,
    )?;
    let backend = select_backend(DeviceChoice::Cpu, Default::default(), None)?.backend;
    println!(
        "{:>20}  {:>10}  {:>12}",
        "micro-batch (seqs)", "seconds", "tokens/s"
    );
    for micro_batch in [1, 2, 4, num_samples] {
        let request = RunRequest {
            token_ids: packed.token_ids.clone(),
            num_sequences: num_samples,
            seq_len,
            capture_layers: (0..model.spec.num_layers).collect(),
            capture_points: CapturePoint::ALL.to_vec(),
            capture_mode: CaptureMode::Statistics {
                threshold: 6.0,
                save: Default::default(),
            },
            final_stage: FinalStage::None,
            micro_batch_sequences: micro_batch,
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
