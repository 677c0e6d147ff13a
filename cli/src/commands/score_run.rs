//! The scoring run both `score` modes share (packed sequences, or records of their own
//! lengths): the budget plan (`--vram`, `--ram`, `--dry-run`; the head planned like any part),
//! and the checkpoint folder `analyze` keeps (progress.json, a record per finished layer,
//! hidden states every `--checkpoint-every` seconds), so a crashed or killed scoring run
//! resumes at its layer when the same command runs again, and a different one is refused.

use super::estimate::{make_estimate, planned_run, print_estimate};
use super::{NamedModel, choose_backend};
use crate::args::ScoreArgs;
use crate::progress::{ProgressMode, WithProgress};
use anyhow::Result;
use layerstream_runtime::checkpoint::{
    AnalysisFolder, FolderOptions, RunIdentity, model_fingerprint,
};
use layerstream_runtime::executor::tee::Tee;
use layerstream_runtime::top_logprobs::TopLogprobs;
use layerstream_runtime::{
    Backend, CaptureMode, FinalStage, RunObserver, RunRequest, Sequences, run,
};
use std::collections::{BTreeMap, BTreeSet};

/// What to score.
pub struct ScoreJob {
    /// `(tokens,)`: every sequence's tokens, back to back.
    pub token_ids: Vec<u32>,
    /// The sequences.
    pub sequences: Sequences,
    /// The most likely next tokens to report, if asked.
    pub top_logprobs: Option<TopLogprobs>,
    /// `--data` as given.
    pub data_name: String,
    /// The data's fingerprint (the whole data's, for a shard).
    pub data_fingerprint: String,
    /// Result-changing settings, compared on resume.
    pub settings: BTreeMap<String, String>,
}

/// Per sequence, its next-token NLLs (`len - 1`) and top log-probabilities.
pub struct ScoreResults {
    sequences: Sequences,
    /// Per sequence, `nll[p - 1]` predicts position `p`.
    pub nll: Vec<Vec<f32>>,
    /// Per sequence, the most likely next tokens at its chosen position.
    pub top: Vec<Vec<(u32, f32)>>,
}

impl RunObserver for ScoreResults {
    fn on_next_token_nll(&mut self, first: usize, nll: &[f32]) {
        let mut rest = nll;
        let mut s = first;
        while !rest.is_empty() {
            let (mine, after) = rest.split_at(self.sequences.len_of(s) - 1);
            self.nll[s] = mine.to_vec();
            rest = after;
            s += 1;
        }
    }

    fn on_top_logprobs(&mut self, first: usize, top: &[Vec<(u32, f32)>]) {
        for (offset, best) in top.iter().enumerate() {
            self.top[first + offset] = best.clone();
        }
    }
}

/// Plans, runs (or resumes) `job` in `--out`, recording `outputs` as the run's files;
/// `None` for `--dry-run` (the plan printed).
pub fn run_scoring(
    args: &ScoreArgs,
    named: &NamedModel,
    job: ScoreJob,
    outputs: &[&str],
) -> Result<Option<(ScoreResults, String)>> {
    let model = &named.model;
    let all = &job.sequences;
    let longest = all.longest();
    // Records are planned as whole sequences of the longest length (over by less than one).
    let planned = all.tokens().div_ceil(longest.max(1));
    let plan = match (args.dry_run, args.plan.vram) {
        (false, None) => None,
        _ => Some(make_estimate(
            named,
            planned,
            longest,
            "all",
            "resid_post",
            true,
            args.run.compute_dtype,
            args.run.planned_micro_batch_tokens(),
            &args.plan,
        )?),
    };
    if args.dry_run {
        print_estimate(plan.as_ref().expect("planned above"));
        return Ok(None);
    }
    let backend = choose_backend(&args.run)?;
    let micro_batch_tokens = match (&plan, all.uniform_len()) {
        (Some(estimate), _) => estimate.plan.micro_batch_sequences * longest,
        (None, Some(len)) => {
            let count = all.count();
            len * layerstream_planner::micro_batch_sequences(
                count,
                len,
                args.run.micro_batch_tokens(),
            )
        }
        (None, None) => args.run.micro_batch_tokens(),
    };
    let num_layers = model.spec.num_layers;
    let all_layers: BTreeSet<usize> = (0..num_layers).collect();
    let identity = identity(named, &job, &backend, args, micro_batch_tokens);
    let options = FolderOptions {
        restart: args.resume.restart,
        keep_hidden: false,
    };
    let mut folder =
        AnalysisFolder::open(&args.run.out, identity, &all_layers, num_layers, options)?;
    for note in &folder.notes {
        eprintln!("{note}");
    }
    folder.record_outputs(outputs.iter().map(|o| o.to_string()))?;
    let d = model.spec.hidden_size;
    // The head needs the hidden states after the last layer: it counts as one more layer.
    let mut wanted = folder.layers_to_compute(&all_layers);
    wanted.insert(num_layers);
    let mut notes = Vec::new();
    let start = folder.start_point(&wanted, all.tokens(), d, &mut notes)?;
    for note in notes {
        eprintln!("{note}");
    }
    let planned = planned_run(plan.as_ref(), &backend, &args.plan);
    let request = RunRequest {
        token_ids: job.token_ids,
        first_delimiters: Vec::new(),
        sequences: job.sequences.clone(),
        capture_layers: BTreeSet::new(),
        capture_points: Vec::new(),
        capture_mode: CaptureMode::Activations,
        final_stage: FinalStage::NextTokenNll,
        top_logprobs: job.top_logprobs,
        head_vocab_rows: plan
            .as_ref()
            .and_then(|e| e.plan.head_vocab_rows)
            .map(|rows| rows as usize),
        micro_batch_tokens,
        start,
        checkpoint_hidden_states: true,
        hidden_placement: planned.hidden_placement,
        spill_dir: Some(args.run.out.join("work")),
        memory_budget: planned.memory_budget,
        split_layers: planned.split_layers,
    };
    let mut results = ScoreResults {
        nll: vec![Vec::new(); all.count()],
        top: vec![Vec::new(); all.count()],
        sequences: job.sequences,
    };
    let backend_name = backend.to_string();
    let interval = std::time::Duration::from_secs_f64(args.resume.checkpoint_every.max(0.0));
    let mut observer = folder.observer(d, request.sequences.clone(), interval);
    if args.run.progress == ProgressMode::Json {
        observer.on_written(Box::new(|written| {
            eprintln!("{}", crate::progress::checkpoint_event(written))
        }));
    }
    let outcome = {
        let mut both = Tee {
            first: &mut observer,
            second: &mut results,
        };
        let mut progress = WithProgress::new(&mut both, num_layers, args.run.progress);
        let outcome = run(model, &request, &backend, &mut progress);
        progress.finish();
        outcome
    };
    if let Some(spill) = &request.spill_dir {
        let _ = std::fs::remove_dir(spill);
    }
    let written = observer.finish();
    let kept = folder.progress().layers.len();
    let summary = outcome.and_then(|summary| written.map(|()| summary)).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n{kept} finished layer(s) are kept in {}: fix the cause and run the same command again to continue",
            args.run.out.display()
        )
    })?;
    super::print_transfer(&summary);
    Ok(Some((results, backend_name)))
}

/// What progress.json records of a scoring run.
fn identity(
    named: &NamedModel,
    job: &ScoreJob,
    backend: &Backend,
    args: &ScoreArgs,
    micro_batch_tokens: usize,
) -> RunIdentity {
    let fingerprint = model_fingerprint(&named.model);
    let arithmetic = match backend {
        Backend::Cpu(_) => "cpu f32".to_string(),
        Backend::Cuda(cuda) => format!(
            "cuda {} compute {:?}",
            cuda.gpu.arch, args.run.compute_dtype
        )
        .to_lowercase(),
    };
    let mut settings = job.settings.clone();
    settings.insert("job".into(), "score".into());
    settings.insert("arithmetic".into(), arithmetic);
    RunIdentity {
        model_fingerprint: fingerprint.digest,
        weight_digests: fingerprint.weights,
        model_name: named.name.clone(),
        data_fingerprint: job.data_fingerprint.clone(),
        data_name: job.data_name.clone(),
        settings,
        plan: BTreeMap::from([
            (
                "micro_batch_tokens".to_string(),
                micro_batch_tokens.to_string(),
            ),
            ("backend".to_string(), backend.to_string()),
        ]),
    }
}
