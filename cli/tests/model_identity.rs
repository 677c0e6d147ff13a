//! A folder belongs to one model (issue 15, item 1): the fingerprint covers the weights'
//! content (sampled bytes of every tensor), so another checkpoint of the same shapes is
//! refused instead of resumed into, and the refusal says which weights differ.

mod common;

use common::{assert_fails_with, assert_succeeds, copy_fixture_model, docs, layerstream};
use std::path::Path;

/// Flips the first bytes of `tensor`'s values in `model/model.safetensors`.
fn flip_tensor_bytes(model: &Path, tensor: &str) {
    let path = model.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let start = header[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
    for b in &mut bytes[8 + header_len + start..8 + header_len + start + 4] {
        *b ^= 0x55;
    }
    std::fs::write(&path, bytes).unwrap();
}

fn analyze(home: &Path, model: &Path, out: &Path, layers: &str) -> std::process::Output {
    let (model, out) = (model.to_str().unwrap(), out.to_str().unwrap());
    let data = docs();
    let mut args = common::small_analyze_args(model, &data, out);
    args.extend(["--layers", layers]);
    layerstream(&args, home)
}

#[test]
fn another_checkpoint_of_the_same_shapes_is_refused_naming_the_weights_that_differ() {
    let home = tempfile::tempdir().unwrap();
    let a = copy_fixture_model("llama3", &home.path().join("ckA"));
    let b = copy_fixture_model("llama3", &home.path().join("ckB"));
    flip_tensor_bytes(&b, "model.layers.1.mlp.down_proj.weight");
    let out = home.path().join("run");
    assert_succeeds(&analyze(home.path(), &a, &out, "0"));
    let refused = analyze(home.path(), &b, &out, "0-2");
    assert_fails_with(
        &refused,
        &[
            "holds a run that differs",
            "the model differs",
            "the weights of layer 1 differ",
        ],
    );
    // The folder still holds model A's finished layer: A resumes and finishes.
    assert_succeeds(&analyze(home.path(), &a, &out, "0-2"));
}

#[test]
fn bytes_flipped_right_after_the_header_are_noticed() {
    let home = tempfile::tempdir().unwrap();
    let a = copy_fixture_model("llama3", &home.path().join("ckA"));
    let b = copy_fixture_model("llama3", &home.path().join("ckB"));
    // The reproduction: whichever tensor's values come first in the file.
    let path = b.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header_len] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let out = home.path().join("run");
    assert_succeeds(&analyze(home.path(), &a, &out, "0"));
    assert_fails_with(
        &analyze(home.path(), &b, &out, "0-2"),
        &["the model differs", "differ"],
    );
}
