//! bf16 runs against transformers' own bf16 run. For fixtures whose bf16 errors are large by
//! nature (Qwen3-Next's gated norm divides each DeltaNet head by its RMS, so where a head's
//! output is small, bf16 rounding grows by its inverse: several % of a point's scale in a tiny
//! random model, in transformers as much as here), `generate.py` also records transformers'
//! bf16 forward (`bf16_peer.*`). The run must then be no further from the f32 reference than
//! the peer is: each point's and the logits' NMSE at most twice the peer's.

use crate::{KeepEverything, REFERENCE_POINTS, Reference, nmse};

/// Whether the fixture has a bf16 peer run.
pub fn has_bf16_peer(reference: &Reference) -> bool {
    reference.maybe("bf16_peer.logits").is_some()
}

/// Asserts that `kept` (a bf16 run of `layers` layers) is within twice the peer's NMSE of the
/// f32 reference at every point and at the logits.
pub fn assert_no_worse_than_the_bf16_peer(
    name: &str,
    reference: &Reference,
    kept: &KeepEverything,
    layers: usize,
) {
    let mut keys: Vec<String> = (0..layers)
        .flat_map(|l| REFERENCE_POINTS.iter().map(move |p| p.full_name(l)))
        .collect();
    keys.push("logits".into());
    for key in keys {
        let expected = &reference.get(&key).values;
        let peer = &reference.get(&format!("bf16_peer.{key}")).values;
        let got = match key.as_str() {
            "logits" => &kept.logits,
            _ => &kept.captures[&key],
        };
        let (ours, theirs) = (nmse(got, expected), nmse(peer, expected));
        eprintln!("bf16 {name} {key}: NMSE {ours:.2e}, transformers bf16 {theirs:.2e}");
        assert!(
            ours <= 2.0 * theirs,
            "bf16 {name} {key}: NMSE {ours:.3e} against the f32 reference, transformers' own bf16 run {theirs:.3e}"
        );
    }
}
