//! The embedded default model edited for massive activations of a known place: the residual
//! stream is the embedding at every layer (every o_proj and down_proj zero), and the
//! embedding rows of `tokens` hold 50 everywhere and 30,000 at dimension [`PLANTED_DIM`], so
//! a sequence's median stays small while those tokens' own median is 50.

use layerstream_tests::edit_tensors;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The dimension holding the planted values.
pub const PLANTED_DIM: usize = 10;
/// The default model's hidden width.
pub const DEFAULT_HIDDEN: usize = 128;

/// The embedded default model's folder.
pub fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default-model")
}

/// A copy of the default model in `dir`, with `tokens`' rows planted.
pub fn plant_massive_rows(dir: &Path, tokens: &BTreeSet<u32>) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(default_model()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    edit_tensors(dir, |name, _, values| {
        if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
            values.fill(0.0);
        }
        if name == "model.embed_tokens.weight" {
            for &token in tokens {
                let row = &mut values
                    [token as usize * DEFAULT_HIDDEN..(token as usize + 1) * DEFAULT_HIDDEN];
                row.fill(50.0);
                row[PLANTED_DIM] = 30_000.0;
            }
        }
    });
}
