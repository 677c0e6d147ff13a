//! The planner's buffer manifest is the allocation: on the CPU backend, the micro-batch
//! buffers of every layer of every fixture hold exactly the bytes the manifest lists (and
//! reserves), at several micro-batch sizes and budgets. The executor checks the same on
//! every micro-batch buffer it makes (an internal error otherwise), so the runs below fail
//! if allocation and manifest drift apart.

use layerstream_planner::memory::{HiddenPlacement, ScratchFor, ScratchManifest};
use layerstream_runtime::Sequences;
use layerstream_runtime::cpu::CpuBackend;
use layerstream_runtime::cpu::layer::LayerScratch;
use layerstream_runtime::plan::layer_shapes;
use layerstream_runtime::{
    Backend, CaptureMode, CapturePoint, FinalStage, Model, PointSet, RunRequest, RuntimeError, run,
};
use layerstream_tests::{FIXTURES, KeepEverything, fixture_model};

#[test]
fn cpu_micro_batch_buffers_are_exactly_the_manifest_for_every_fixture_and_layer() {
    for fixture in FIXTURES {
        let model = Model::open(&fixture_model(fixture)).unwrap();
        for (layer, shapes) in layer_shapes(&model.spec, 32).iter().enumerate() {
            for rows in [1, 17, 64, 256] {
                let manifest = ScratchManifest::for_layer(shapes, rows, ScratchFor::Cpu);
                let allocated = LayerScratch::new(&manifest, rows).allocated_bytes();
                assert_eq!(
                    allocated,
                    manifest.total_bytes(),
                    "{fixture} layer {layer}, {rows} rows: allocated vs manifest"
                );
                // The GPU manifest adds exactly the 16-bit copies of GEMM inputs, the f16
                // overflow guard (u32: a count, then 3 per row) and the chunked delta rule's
                // buffers (f32).
                use layerstream_planner::memory::BufferName::*;
                let gpu = ScratchManifest::for_layer(shapes, rows, ScratchFor::Gpu);
                let chunked: usize = [
                    DeltaChunkQ,
                    DeltaChunkK,
                    DeltaChunkW,
                    DeltaChunkU,
                    DeltaChunkT,
                    DeltaChunkA,
                    DeltaChunkG,
                    DeltaChunkBeta,
                    DeltaChunkOut,
                ]
                .map(|name| gpu.count(name))
                .iter()
                .sum();
                assert_eq!(
                    gpu.total_bytes() - manifest.total_bytes(),
                    2 * gpu.count(Bf16Inputs) as u64
                        + 4 * chunked as u64
                        + 4 * (1 + 3 * rows) as u64,
                    "{fixture} layer {layer}"
                );
            }
        }
    }
}

#[test]
fn runs_under_several_budgets_allocate_what_they_reserve() {
    for fixture in FIXTURES {
        let model = Model::open(&fixture_model(fixture)).unwrap();
        let (sequences, seq_len) = (4, 32);
        for budget in [None, Some(64u64 << 20), Some(1 << 20), Some(400 << 10)] {
            let request = RunRequest {
                token_ids: (0..sequences * seq_len).map(|i| (i % 50) as u32).collect(),
                first_delimiters: Vec::new(),
                sequences: Sequences::uniform(sequences, seq_len),
                capture_layers: (0..model.spec.num_layers).collect(),
                capture_points: CapturePoint::ALL.to_vec(),
                capture_mode: CaptureMode::Statistics {
                    threshold: 1.0,
                    save: PointSet::EMPTY,
                },
                final_stage: FinalStage::None,
                top_logprobs: None,
                head_vocab_rows: None,
                micro_batch_tokens: 2 * seq_len,
                start: None,
                checkpoint_hidden_states: false,
                hidden_placement: HiddenPlacement::Device,
                spill_dir: None,
                memory_budget: budget,
                split_layers: Default::default(),
            };
            let backend = Backend::Cpu(CpuBackend::new(Some(2)));
            let must_fit = budget.is_none_or(|b| b >= 64 << 20);
            match run(&model, &request, &backend, &mut KeepEverything::default()) {
                Ok(_) => {}
                Err(error) if must_fit => panic!("{fixture} with budget {budget:?}: {error}"),
                // A budget below one sequence of one layer part is refused as such.
                Err(RuntimeError::InvalidRequest(m))
                    if budget.is_some() && m.contains("does not fit even") => {}
                Err(RuntimeError::OutOfMemory(_)) if budget.is_some() => {}
                Err(other) => panic!("{fixture} with budget {budget:?}: {other}"),
            }
        }
    }
}
