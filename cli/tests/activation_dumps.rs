//! `--save-activations` laid out for SAE training: bf16 shards read back equal to the f32
//! dump rounded to bf16 (ties to even, as torch rounds), shards no larger than
//! `--shard-bytes`, the index naming every shard in row order, a seeded sample of positions
//! the same at every layer and point, a resumed run with another layout saving again, and
//! refusals.

mod common;

use common::{assert_fails_with, assert_succeeds, docs, fixture_model_path, stderr};
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

const SEQUENCES: usize = 3;
const SEQ_LEN: usize = 32;

fn analyze(home: &Path, out: &str, extra: &[&str]) -> Output {
    let (model, data) = (fixture_model_path("llama3"), docs());
    let (sequences, seq_len) = (SEQUENCES.to_string(), SEQ_LEN.to_string());
    let mut args = vec![
        "analyze",
        "--model",
        &model,
        "--data",
        &data,
        "--device",
        "cpu",
        "--num-samples",
        &sequences,
        "--seq-len",
        &seq_len,
        "--out",
        out,
        "--bootstrap",
        "0",
        "--layers",
        "0-1",
    ];
    args.extend_from_slice(extra);
    common::layerstream(&args, home)
}

fn index(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("activations/index.json")).unwrap()).unwrap()
}

/// The U32 tensor `name` of a file.
fn u32s(file: &SafeTensors, name: &str) -> Vec<u32> {
    file.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// A layer and point's rows: `(values as raw element bits, width, [token, sequence, position]
/// per row)`, its shards read in the index's order; checks each shard's size and first row.
fn rows(out: &Path, layer: usize, point: &str) -> (Vec<u32>, usize, Vec<[u32; 3]>) {
    let index = index(out);
    let (mut bits, mut identity, mut width) = (Vec::new(), Vec::new(), 0);
    for shard in index["shards"].as_array().unwrap() {
        if shard["layer"] != layer || shard["point"] != point {
            continue;
        }
        let path = out
            .join("activations")
            .join(shard["path"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, shard["bytes"].as_u64().unwrap());
        assert_eq!(identity.len() as u64, shard["first_row"].as_u64().unwrap());
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let values = file.tensor("activations").unwrap();
        width = values.shape()[1];
        assert_eq!(
            values.shape()[0],
            shard["shape"][0].as_u64().unwrap() as usize
        );
        let size = values.data().len() / (values.shape()[0] * width);
        bits.extend(values.data().chunks_exact(size).map(|b| match size {
            4 => u32::from_le_bytes(b.try_into().unwrap()),
            _ => u16::from_le_bytes(b.try_into().unwrap()) as u32,
        }));
        let (t, s, p) = (
            u32s(&file, "token_ids"),
            u32s(&file, "sequence"),
            u32s(&file, "position"),
        );
        identity.extend((0..t.len()).map(|i| [t[i], s[i], p[i]]));
    }
    (bits, width, identity)
}

/// An f32's bits rounded to bf16, ties to even, as torch's `c10::round_to_nearest_even`
/// computes it (written here apart from the runtime's conversion).
fn round_to_bf16(bits: u32) -> u32 {
    assert!(!f32::from_bits(bits).is_nan());
    let rounding_bias = 0x7fff + ((bits >> 16) & 1);
    (bits + rounding_bias) >> 16
}

#[test]
fn bf16_shards_are_the_f32_values_rounded_and_stay_under_the_shard_size() {
    let home = tempfile::tempdir().unwrap();
    let save = ["--save-activations", "ln1,resid_post"];
    assert_succeeds(&analyze(home.path(), "f32", &save));
    let shard_bytes = 1000;
    let limit = shard_bytes.to_string();
    let extra = [
        &save[..],
        &["--activation-dtype", "bf16", "--shard-bytes", &limit],
    ]
    .concat();
    assert_succeeds(&analyze(home.path(), "bf16", &extra));
    let (f32_out, bf16_out) = (home.path().join("f32"), home.path().join("bf16"));
    let index16 = index(&bf16_out);
    assert_eq!(index16["format"], "layerstream-activations");
    assert_eq!(index16["layers"], serde_json::json!([0, 1]));
    assert_eq!(index16["rows"], SEQUENCES * SEQ_LEN);
    for layer in 0..2 {
        for point in ["ln1", "resid_post"] {
            let (full, width, identity) = rows(&f32_out, layer, point);
            let (half, width16, identity16) = rows(&bf16_out, layer, point);
            assert_eq!((width, width16), (width, width));
            assert_eq!(identity, identity16, "the same tokens in the same order");
            assert_eq!(full.len(), SEQUENCES * SEQ_LEN * width);
            let rounded: Vec<u32> = full.iter().map(|&b| round_to_bf16(b)).collect();
            assert_eq!(half, rounded, "layer {layer} {point}: bf16 = f32 rounded");
            // Every row is one token: sequence by sequence, positions ascending.
            for (row, [_, s, p]) in identity.iter().enumerate() {
                assert_eq!((*s as usize, *p as usize), (row / SEQ_LEN, row % SEQ_LEN));
            }
        }
    }
    let shards = index16["shards"].as_array().unwrap();
    assert!(
        shards.len() > 4,
        "several shards per layer and point: {}",
        shards.len()
    );
    for shard in shards {
        let rows = shard["shape"][0].as_u64().unwrap();
        let width = shard["shape"][1].as_u64().unwrap();
        assert!(rows * width * 2 <= shard_bytes, "{shard}");
    }
    // The token file and the shards agree on every row's token.
    let tokens = std::fs::read(bf16_out.join("activations/tokens.safetensors")).unwrap();
    let tokens = SafeTensors::deserialize(&tokens).unwrap();
    let (_, _, identity) = rows(&bf16_out, 1, "ln1");
    assert_eq!(
        u32s(&tokens, "token_ids"),
        identity.iter().map(|r| r[0]).collect::<Vec<_>>()
    );
    assert_eq!(
        u32s(&tokens, "position"),
        identity.iter().map(|r| r[2]).collect::<Vec<_>>()
    );
}

#[test]
fn a_seeded_sample_keeps_the_same_positions_at_every_layer_and_point() {
    let home = tempfile::tempdir().unwrap();
    let save = ["--save-activations", "ln1,resid_post"];
    assert_succeeds(&analyze(home.path(), "all", &save));
    let sampled = [&save[..], &["--save-tokens", "5", "--seed", "3"]].concat();
    assert_succeeds(&analyze(home.path(), "sample", &sampled));
    let (all, sample) = (home.path().join("all"), home.path().join("sample"));
    assert_eq!(index(&sample)["rows"], SEQUENCES * 5);
    let (_, _, first) = rows(&sample, 0, "ln1");
    for s in 0..SEQUENCES {
        let positions: Vec<u32> = first[s * 5..(s + 1) * 5].iter().map(|r| r[2]).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        assert!(first[s * 5..(s + 1) * 5].iter().all(|r| r[1] == s as u32));
    }
    assert_ne!(first[..5], first[5..10], "each sequence its own sample");
    for layer in 0..2 {
        for point in ["ln1", "resid_post"] {
            let (values, width, identity) = rows(&sample, layer, point);
            assert_eq!(identity, first, "layer {layer} {point}: the same positions");
            let (full, _, _) = rows(&all, layer, point);
            for (row, [_, s, p]) in identity.iter().enumerate() {
                let at = (*s as usize * SEQ_LEN + *p as usize) * width;
                assert_eq!(values[row * width..(row + 1) * width], full[at..at + width]);
            }
        }
    }
    // The same seed draws the same sample; another draws another.
    assert_succeeds(&analyze(home.path(), "again", &sampled));
    assert_eq!(rows(&home.path().join("again"), 1, "ln1").2, first);
    let other = [&save[..], &["--save-tokens", "5", "--seed", "4"]].concat();
    assert_succeeds(&analyze(home.path(), "other", &other));
    assert_ne!(rows(&home.path().join("other"), 1, "ln1").2, first);
}

#[test]
fn a_resumed_run_with_another_layout_saves_the_layers_again() {
    let home = tempfile::tempdir().unwrap();
    let save = ["--save-activations", "resid_post"];
    assert_succeeds(&analyze(home.path(), "out", &save));
    let out = home.path().join("out");
    assert_eq!(index(&out)["layout"]["dtype"], "f32");
    let bf16 = [&save[..], &["--activation-dtype", "bf16"]].concat();
    let output = analyze(home.path(), "out", &bf16);
    assert_succeeds(&output);
    assert!(
        stderr(&output)
            .contains("layer(s) 0, 1 were finished by an earlier run without these activations"),
        "{}",
        stderr(&output)
    );
    assert_eq!(index(&out)["layout"]["dtype"], "bf16");
    assert_eq!(index(&out)["layers"], serde_json::json!([0, 1]));
    // The same layout again: nothing to compute.
    let output = analyze(home.path(), "out", &bf16);
    assert_succeeds(&output);
    assert!(!stderr(&output).contains("computing them again"));
}

#[test]
fn refusals_name_the_flag_and_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let save = ["--save-activations", "resid_post"];
    let tiny = [&save[..], &["--shard-bytes", "16"]].concat();
    assert_fails_with(
        &analyze(home.path(), "tiny", &tiny),
        &["--shard-bytes 16", "resid_post", "give at least that"],
    );
    assert!(!home.path().join("tiny/activations").exists());
    let output = analyze(home.path(), "x", &["--activation-dtype", "bf16"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--save-activations"),
        "{}",
        stderr(&output)
    );
    let bad = [&save[..], &["--activation-dtype", "f8"]].concat();
    let output = analyze(home.path(), "x", &bad);
    assert!(
        stderr(&output).contains("write f32 or bf16"),
        "{}",
        stderr(&output)
    );
    let bad = [&save[..], &["--save-tokens", "0"]].concat();
    let output = analyze(home.path(), "x", &bad);
    assert!(
        stderr(&output).contains("at least 1"),
        "{}",
        stderr(&output)
    );
}
