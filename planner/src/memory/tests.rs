//! The memory model's tests.

use super::*;
use crate::inventory::Inventory;
use crate::inventory::{TensorDtype, TensorEntry, classify_expert, classify_tensor_name};
use crate::split::{GroupTensor, LayerPart, LayerTensorGroups};
use crate::statistics::CapturedPoint;

fn last_name(refs: &[GroupTensor]) -> String {
    refs.last().unwrap().source.name().to_string()
}
use std::path::PathBuf;

/// A dense 4-layer model: hidden 1024, MLP 4096, bf16, vocabulary 32000.
pub(super) fn dense() -> (Inventory, Vec<LayerShapes>) {
    let mut tensors = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let numel: usize = shape.iter().product();
        tensors.push(TensorEntry {
            class: classify_tensor_name(&name),
            expert: classify_expert(&name),
            name,
            shape,
            dtype: TensorDtype::Bf16,
            file_index: 0,
            byte_offset: 0,
            byte_len: 2 * numel as u64,
        });
    };
    add("model.embed_tokens.weight".into(), vec![32000, 1024]);
    add("model.norm.weight".into(), vec![1024]);
    add("lm_head.weight".into(), vec![32000, 1024]);
    for l in 0..4 {
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![1024, 1024]),
            ("self_attn.k_proj.weight", vec![256, 1024]),
            ("self_attn.v_proj.weight", vec![256, 1024]),
            ("self_attn.o_proj.weight", vec![1024, 1024]),
            ("mlp.gate_proj.weight", vec![4096, 1024]),
            ("mlp.up_proj.weight", vec![4096, 1024]),
            ("mlp.down_proj.weight", vec![1024, 4096]),
            ("input_layernorm.weight", vec![1024]),
            ("post_attention_layernorm.weight", vec![1024]),
        ] {
            add(format!("model.layers.{l}.{n}"), s);
        }
    }
    let shapes = (0..4)
        .map(|l| LayerShapes {
            hidden: 1024,
            q_width: 1024,
            kv_width: 256,
            dense_intermediate: 4096,
            mixer: MixerShapes::Attention { gated: false },
            moe: None,
            tensors: LayerTensorGroups {
                attention: ["q", "k", "v", "o"]
                    .iter()
                    .map(|p| format!("model.layers.{l}.self_attn.{p}_proj.weight"))
                    .chain([format!("model.layers.{l}.input_layernorm.weight")])
                    .map(GroupTensor::from)
                    .collect(),
                routing: vec![format!("model.layers.{l}.post_attention_layernorm.weight").into()],
                last: ["gate", "up", "down"]
                    .iter()
                    .map(|p| format!("model.layers.{l}.mlp.{p}_proj.weight").into())
                    .collect(),
                experts: Vec::new(),
            },
        })
        .collect();
    (
        Inventory::new(vec![PathBuf::from("m.safetensors")], tensors),
        shapes,
    )
}

pub(super) fn workload() -> Workload {
    Workload {
        sequences: 16,
        seq_len: 2048,
        captured_points: vec![
            CapturedPoint {
                width: 1024,
                positions: false,
                magnitudes: false,
            };
            6
        ],
        lm_head: false,
        target_micro_batch_tokens: 8192,
    }
}

#[test]
fn weights_from_headers_and_conversions_by_gemm_dtype() {
    let (inventory, _) = dense();
    let (stored, converted) = layer_weight_bytes(&inventory, 0, GemmDtype::Bf16);
    let matrices = 2 * (2 * 1024 * 1024 + 2 * 256 * 1024 + 3 * 4096 * 1024) as u64;
    assert_eq!(stored, matrices + 2 * 2048);
    assert_eq!(converted, 2 * 4096, "only the two norms, to f32");
    let (_, converted_f32) = layer_weight_bytes(&inventory, 0, GemmDtype::F32);
    assert_eq!(
        converted_f32,
        2 * matrices + 2 * 4096,
        "bf16 matrices become f32"
    );
}

#[test]
fn the_largest_micro_batch_that_fits_is_chosen_and_the_peak_is_the_regions() {
    let (inventory, shapes) = dense();
    let roomy = plan(
        &inventory,
        &shapes,
        &workload(),
        GemmDtype::Bf16,
        Some(80 << 30),
        None,
        DEFAULT_OVERHEAD_BYTES,
    )
    .unwrap();
    assert_eq!(roomy.micro_batch_sequences, 4, "the 8192-token target");
    assert_eq!(roomy.hidden_placement, HiddenPlacement::Device);
    assert_eq!(roomy.peak_bytes, roomy.regions.total());
    // Just enough for 2 sequences per micro-batch.
    let two = plan(
        &inventory,
        &shapes,
        &Workload {
            target_micro_batch_tokens: 2 * 2048,
            ..workload()
        },
        GemmDtype::Bf16,
        Some(80 << 30),
        None,
        DEFAULT_OVERHEAD_BYTES,
    )
    .unwrap();
    let tight = plan(
        &inventory,
        &shapes,
        &workload(),
        GemmDtype::Bf16,
        Some(two.peak_bytes),
        None,
        DEFAULT_OVERHEAD_BYTES,
    )
    .unwrap();
    assert_eq!(tight.micro_batch_sequences, 2);
    assert!(tight.peak_bytes <= two.peak_bytes);
    for layer in &tight.layers {
        assert!(layer.needs_bytes <= tight.peak_bytes);
    }
}

#[test]
fn hidden_states_move_to_the_host_when_they_do_not_fit() {
    let (inventory, shapes) = dense();
    let device = plan(
        &inventory,
        &shapes,
        &Workload {
            target_micro_batch_tokens: 2048,
            ..workload()
        },
        GemmDtype::Bf16,
        Some(80 << 30),
        None,
        DEFAULT_OVERHEAD_BYTES,
    )
    .unwrap();
    let whole_hidden = 16 * 2048 * 1024 * 4;
    let budget = device.peak_bytes - whole_hidden / 2;
    let host = plan(
        &inventory,
        &shapes,
        &workload(),
        GemmDtype::Bf16,
        Some(budget),
        None,
        DEFAULT_OVERHEAD_BYTES,
    )
    .unwrap();
    assert_eq!(host.hidden_placement, HiddenPlacement::PinnedHost);
    assert!(host.peak_bytes <= budget);
    assert_eq!(host.host_bytes, host.regions.staging + whole_hidden);
    assert_eq!(host.disk_bytes, 0);
    // A host budget below the workload's hidden states: they go to disk, with the same
    // device regions.
    let disk = plan(
        &inventory,
        &shapes,
        &workload(),
        GemmDtype::Bf16,
        Some(budget),
        Some(whole_hidden / 2),
        DEFAULT_OVERHEAD_BYTES,
    )
    .unwrap();
    assert_eq!(disk.hidden_placement, HiddenPlacement::Disk);
    // Pinned host memory keeps three micro-batch slots on the device, a file one.
    let batch = |sequences: usize| (sequences * 2048 * 1024 * 4) as u64;
    let host_batch = batch(host.micro_batch_sequences);
    assert_eq!(host.regions.hidden, HIDDEN_SLOTS as u64 * host_batch);
    assert_eq!(disk.regions.hidden, batch(disk.micro_batch_sequences));
    assert!(disk.peak_bytes <= budget);
    assert_eq!(disk.disk_bytes, whole_hidden);
    assert_eq!(disk.host_bytes, disk.regions.staging);
    // Not even the pinned staging buffers fit the host: refused, naming the host.
    let error = plan(
        &inventory,
        &shapes,
        &workload(),
        GemmDtype::Bf16,
        Some(budget),
        Some(1 << 20),
        DEFAULT_OVERHEAD_BYTES,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.starts_with("the host budget 1.00 MiB cannot hold the two pinned staging buffers"),
        "{error}"
    );
}

#[test]
fn a_budget_too_small_for_one_layer_says_what_it_needs() {
    let (inventory, shapes) = dense();
    let error = plan(
        &inventory,
        &shapes,
        &workload(),
        GemmDtype::Bf16,
        Some(512 << 20),
        None,
        DEFAULT_OVERHEAD_BYTES,
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("layer 0 needs at least"), "{message}");
    assert!(
        message.contains("x2 buffers")
            && message.contains("the budget is 512.00 MiB")
            && message.contains("try --vram 1GiB"),
        "{message}"
    );
}

/// A MoE 2-layer model: hidden 1024, 8 experts of width 2048, bf16.
fn moe() -> (Inventory, Vec<LayerShapes>) {
    let mut tensors = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let numel: usize = shape.iter().product();
        tensors.push(TensorEntry {
            class: classify_tensor_name(&name),
            expert: classify_expert(&name),
            name,
            shape,
            dtype: TensorDtype::Bf16,
            file_index: 0,
            byte_offset: 0,
            byte_len: 2 * numel as u64,
        });
    };
    add("model.embed_tokens.weight".into(), vec![32000, 1024]);
    let mut shapes = Vec::new();
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        let mut groups = LayerTensorGroups::default();
        for n in ["q", "k", "v", "o"] {
            groups
                .attention
                .push(format!("{p}.self_attn.{n}_proj.weight").into());
            add(last_name(&groups.attention), vec![1024, 1024]);
        }
        groups
            .attention
            .push(format!("{p}.input_layernorm.weight").into());
        add(last_name(&groups.attention), vec![1024]);
        groups
            .routing
            .push(format!("{p}.post_attention_layernorm.weight").into());
        add(last_name(&groups.routing), vec![1024]);
        groups.routing.push(format!("{p}.mlp.gate.weight").into());
        add(last_name(&groups.routing), vec![8, 1024]);
        for e in 0..8 {
            let names: Vec<String> = ["gate", "up", "down"]
                .iter()
                .map(|n| format!("{p}.mlp.experts.{e}.{n}_proj.weight"))
                .collect();
            add(names[0].clone(), vec![2048, 1024]);
            add(names[1].clone(), vec![2048, 1024]);
            add(names[2].clone(), vec![1024, 2048]);
            groups
                .experts
                .push(names.into_iter().map(GroupTensor::from).collect());
        }
        shapes.push(LayerShapes {
            hidden: 1024,
            q_width: 1024,
            kv_width: 1024,
            dense_intermediate: 0,
            mixer: MixerShapes::Attention { gated: false },
            moe: Some(MoeShapes {
                experts: 8,
                top_k: 2,
                expert_intermediate: 2048,
                shared_intermediate: 0,
            }),
            tensors: groups,
        });
    }
    (
        Inventory::new(vec![PathBuf::from("m.safetensors")], tensors),
        shapes,
    )
}

fn small_workload() -> Workload {
    Workload {
        sequences: 4,
        seq_len: 128,
        captured_points: vec![
            CapturedPoint {
                width: 1024,
                positions: false,
                magnitudes: false,
            };
            6
        ],
        lm_head: false,
        target_micro_batch_tokens: 512,
    }
}

#[test]
fn a_layer_that_does_not_fit_whole_is_split_into_attention_and_expert_groups() {
    let (inventory, shapes) = moe();
    let overhead = 16 << 20;
    let plan_for = |budget| {
        plan(
            &inventory,
            &shapes,
            &small_workload(),
            GemmDtype::Bf16,
            Some(budget),
            None,
            overhead,
        )
    };
    let whole = plan(
        &inventory,
        &shapes,
        &small_workload(),
        GemmDtype::Bf16,
        None,
        None,
        overhead,
    )
    .unwrap();
    assert!(whole.split_layers.is_empty());
    assert_eq!(whole.layers[0].parts.len(), 1);
    let layer_bytes = whole.layers[0].weight_bytes;
    let expert_bytes = 3 * 2048 * 1024 * 2;
    assert_eq!(
        layer_bytes,
        4 * 1024 * 1024 * 2 + 8 * expert_bytes + 2048 + 16 * 1024 + 2048
    );
    assert_eq!(whole.regions.staging, 2 * layer_bytes);
    assert_eq!(whole.regions.accumulator, 0);

    // Half a layer less than the whole plan: the layers split, the peak fits.
    let budget = whole.peak_bytes - layer_bytes / 2;
    let split = plan_for(budget).unwrap();
    assert_eq!(split.split_layers, vec![0, 1]);
    assert_eq!(split.hidden_placement, HiddenPlacement::Device);
    assert!(split.peak_bytes <= budget);
    let parts = &split.layers[0].parts;
    assert_eq!(parts[0].part, LayerPart::Attention);
    assert!(parts.len() >= 3, "attention and at least two expert groups");
    let largest = parts.iter().map(|p| p.weight_bytes).max().unwrap();
    assert_eq!(split.regions.staging, 2 * largest);
    assert_eq!(
        parts.iter().map(|p| p.weight_bytes).sum::<u64>(),
        layer_bytes + (parts.len() as u64 - 2) * (2048 + 16 * 1024),
        "every tensor once; the routing tensors in every feed-forward part"
    );
    assert_eq!(
        split.regions.accumulator,
        4 * 128 * 1024 * 4,
        "the workload's width"
    );
    assert_eq!(split.micro_batch_sequences, 4);

    // Smaller still: one expert per part at most, then refused with the smallest part named.
    let tighter = plan_for(split.peak_bytes - 2 * expert_bytes).unwrap();
    assert!(tighter.layers[0].parts.len() > parts.len());
    let error = plan_for(overhead + 2 * expert_bytes)
        .unwrap_err()
        .to_string();
    assert!(error.contains("(split, its largest part "), "{error}");
}

#[test]
fn a_dense_layer_splits_into_attention_and_mlp() {
    let (inventory, shapes) = dense();
    let one_sequence = Workload {
        target_micro_batch_tokens: 2048,
        ..workload()
    };
    let roomy = plan(
        &inventory,
        &shapes,
        &one_sequence,
        GemmDtype::Bf16,
        None,
        None,
        DEFAULT_OVERHEAD_BYTES,
    )
    .unwrap();
    let mlp_bytes = 3 * 4096 * 1024 * 2;
    let budget = roomy.peak_bytes - (roomy.regions.staging - 2 * (mlp_bytes + 2048)) / 2;
    let split = plan(
        &inventory,
        &shapes,
        &one_sequence,
        GemmDtype::Bf16,
        Some(budget),
        None,
        DEFAULT_OVERHEAD_BYTES,
    )
    .unwrap();
    assert_eq!(split.split_layers, vec![0, 1, 2, 3]);
    let parts: Vec<_> = split.layers[0]
        .parts
        .iter()
        .map(|p| p.part.describe())
        .collect();
    assert_eq!(parts, vec!["attention", "mlp"]);
    assert_eq!(split.regions.accumulator, 0, "one feed-forward part");
    assert_eq!(split.regions.staging, 2 * (mlp_bytes + 2048));
    assert!(split.peak_bytes <= budget);
}

#[test]
fn moe_buffers_grow_with_top_k_and_tokens() {
    let shapes = LayerShapes {
        hidden: 2048,
        q_width: 2048,
        kv_width: 2048,
        dense_intermediate: 0,
        mixer: MixerShapes::Attention { gated: false },
        moe: Some(MoeShapes {
            experts: 64,
            top_k: 8,
            expert_intermediate: 1024,
            shared_intermediate: 0,
        }),
        tensors: LayerTensorGroups::default(),
    };
    let (_, one) = activation_bytes(&shapes, 2048);
    let (_, two) = activation_bytes(&shapes, 4096);
    assert_eq!(
        two,
        2 * one - 4 * 2 * 64,
        "linear in tokens except the per-expert counts"
    );
    // gathered + expert outputs dominate: 2 x tokens x top_k x hidden x 4 bytes.
    assert!(one > 2 * 2048 * 8 * 2048 * 4);
}

#[test]
fn delta_net_layers_list_their_buffers_and_chunked_state() {
    use crate::memory::{DeltaNetShapes, MixerShapes};
    let delta = DeltaNetShapes {
        key_heads: 16,
        value_heads: 32,
        key_dim: 128,
        value_dim: 128,
        seq_len: 100,
    };
    let shapes = LayerShapes {
        hidden: 2048,
        q_width: 4096,
        kv_width: 512,
        dense_intermediate: 0,
        mixer: MixerShapes::DeltaNet(delta),
        moe: None,
        tensors: LayerTensorGroups::default(),
    };
    let rows = 300; // 3 sequences of 100, padded to 128 each
    let gpu = ScratchManifest::for_layer(&shapes, rows, ScratchFor::Gpu);
    assert_eq!(gpu.count(BufferName::Projected), rows * 12288);
    assert_eq!(gpu.count(BufferName::Mixed), rows * 8192);
    assert_eq!(gpu.count(BufferName::Q), rows * 2048);
    assert_eq!(gpu.count(BufferName::V), rows * 4096);
    assert_eq!(gpu.count(BufferName::Beta), rows * 32);
    assert_eq!(gpu.count(BufferName::DeltaState), 3 * 32 * 128 * 128);
    assert_eq!(gpu.count(BufferName::DeltaChunkU), 32 * 384 * 256);
    assert_eq!(gpu.count(BufferName::DeltaChunkT), 32 * 384 * 64);
    assert_eq!(gpu.count(BufferName::Bf16Inputs), rows * 4096);
    let cpu = ScratchManifest::for_layer(&shapes, rows, ScratchFor::Cpu);
    assert!(cpu.lists(BufferName::DeltaState) && !cpu.lists(BufferName::DeltaChunkQ));
    let attention = LayerShapes {
        mixer: MixerShapes::Attention { gated: true },
        ..shapes.clone()
    };
    let gated = ScratchManifest::for_layer(&attention, rows, ScratchFor::Cpu);
    assert_eq!(gated.count(BufferName::Projected), rows * 8192);
    assert_eq!(gated.count(BufferName::MixerGate), rows * 4096);
    assert!(!gated.lists(BufferName::DeltaState));
    let plain = LayerShapes {
        mixer: MixerShapes::Attention { gated: false },
        ..shapes
    };
    let plain = ScratchManifest::for_layer(&plain, rows, ScratchFor::Cpu);
    assert!(!plain.lists(BufferName::Projected) && !plain.lists(BufferName::MixerGate));
}

/// A head that does not fit next to a layer is split by vocabulary rows, halved until the
/// run fits; the plan's peak is then its regions with the head's part.
#[test]
fn an_output_head_that_does_not_fit_is_split_by_vocabulary_rows() {
    let (inventory, shapes) = dense();
    let scoring = Workload {
        captured_points: Vec::new(),
        lm_head: true,
        ..workload()
    };
    let whole_head = plan(
        &inventory,
        &shapes,
        &scoring,
        GemmDtype::Bf16,
        None,
        None,
        0,
    )
    .unwrap();
    assert_eq!(whole_head.head_vocab_rows, None);
    // The head alone is 32000 x 1024 bf16 = 62.5 MiB: a budget below what the whole head
    // needs with one sequence, but above what a part of it needs.
    let one_sequence_whole = {
        let mut search = search::Search::new(
            &inventory,
            &shapes,
            &scoring,
            GemmDtype::Bf16,
            None,
            None,
            0,
        );
        search.head_rows = None;
        let units = search.units(search::Cut::Whole);
        search.regions(&units, 1, HiddenPlacement::Disk).total()
    };
    let budget = one_sequence_whole - (40 << 20);
    let split = plan(
        &inventory,
        &shapes,
        &scoring,
        GemmDtype::Bf16,
        Some(budget),
        None,
        0,
    )
    .unwrap();
    let rows = split.head_vocab_rows.expect("split");
    assert!((HEAD_MIN_ROWS..32000).contains(&rows), "{rows}");
    assert!(split.peak_bytes <= budget);
    assert_eq!(split.peak_bytes, split.regions.total());
    assert_eq!(
        split.regions.head,
        head_bytes(
            &inventory,
            GemmDtype::Bf16,
            split.micro_batch_sequences * 2048,
            Some(rows)
        )
    );
    // Twice the rows would not have fitted (the largest part that fits is taken).
    let mut bigger = split.regions;
    bigger.head = head_bytes(&inventory, GemmDtype::Bf16, 2048, Some(rows * 2));
    assert!(rows * 2 >= 32000 || bigger.total() > budget);
    // Analysis runs never split a head they do not have.
    let analysis = plan(
        &inventory,
        &shapes,
        &workload(),
        GemmDtype::Bf16,
        Some(budget),
        None,
        0,
    )
    .unwrap();
    assert_eq!(analysis.head_vocab_rows, None);
}
