//! The magnitudes Sun et al.'s layer-wise figure shows, per sequence and layer of the
//! residual stream: the three largest |x| and the median |x| over all of the sequence's
//! `T x d` values (their code, `main_llm.py`'s layer-wise experiment: `torch.sort` of the
//! flattened magnitudes and `torch.median`, the lower of the two middle values for an even
//! count). The median is also what the primary massive-activation reading compares with.
//! Non-finite values are left out (they are counted and reported separately).

use serde::{Deserialize, Serialize};

/// One sequence's magnitudes at one layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequenceMagnitudes {
    /// Sequence of the workload.
    pub sequence: usize,
    /// The largest, second and third largest finite |x| (0 where there are fewer values).
    pub top: [f32; 3],
    /// Median finite |x| over the sequence's `T x d` values (the lower middle one).
    pub median: f32,
}

/// The lower median of the finite |x| of `values` (`torch.median`'s choice: the
/// `(n - 1) / 2`-th smallest), 0 when there are none. Exact: a selection, not a histogram.
pub fn lower_median_magnitude(values: &[f32]) -> f32 {
    let mut magnitudes: Vec<f32> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| v.abs())
        .collect();
    if magnitudes.is_empty() {
        return 0.0;
    }
    let rank = (magnitudes.len() - 1) / 2;
    *magnitudes.select_nth_unstable_by(rank, f32::total_cmp).1
}

/// The three largest finite |x| of `values`, largest first (repeated values count each
/// time, as in a sort); 0 fills in for missing ones.
pub fn top_magnitudes(values: &[f32]) -> [f32; 3] {
    let mut top = [0f32; 3];
    for value in values.iter().filter(|v| v.is_finite()) {
        insert_top(&mut top, value.abs());
    }
    top
}

/// Puts `magnitude` into `top` (largest first) if it ranks among its three.
pub fn insert_top(top: &mut [f32; 3], magnitude: f32) {
    if magnitude <= top[2] {
        return;
    }
    top[2] = magnitude;
    if top[2] > top[1] {
        top.swap(1, 2);
        if top[1] > top[0] {
            top.swap(0, 1);
        }
    }
}

/// The layer's magnitudes as the paper plots them: each over the sequences' mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerMagnitudes {
    /// Sequences averaged.
    pub sequences: usize,
    /// Mean largest |x|.
    pub top1: f64,
    /// Mean second largest |x|.
    pub top2: f64,
    /// Mean third largest |x|.
    pub top3: f64,
    /// Mean median |x|.
    pub median: f64,
}

impl LayerMagnitudes {
    /// The means over `sequences` (`np.mean(stats, axis=0)` in `plot_layer_ax`).
    pub fn of(sequences: &[SequenceMagnitudes]) -> Self {
        let n = sequences.len().max(1) as f64;
        let mean = |f: &dyn Fn(&SequenceMagnitudes) -> f32| {
            sequences.iter().map(|s| f(s) as f64).sum::<f64>() / n
        };
        LayerMagnitudes {
            sequences: sequences.len(),
            top1: mean(&|s| s.top[0]),
            top2: mean(&|s| s.top[1]),
            top3: mean(&|s| s.top[2]),
            median: mean(&|s| s.median),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_median_as_torch_takes_it() {
        assert_eq!(lower_median_magnitude(&[3.0, -1.0, 2.0]), 2.0);
        // Even count: the lower of the two middle ones (torch.median), not their mean.
        assert_eq!(lower_median_magnitude(&[4.0, -1.0, 2.0, -3.0]), 2.0);
        assert_eq!(lower_median_magnitude(&[f32::NAN, 5.0, f32::INFINITY]), 5.0);
        assert_eq!(lower_median_magnitude(&[]), 0.0);
    }

    #[test]
    fn top_three_count_repeats_and_skip_non_finite() {
        assert_eq!(
            top_magnitudes(&[1.0, -7.0, 7.0, f32::NAN, 3.0]),
            [7.0, 7.0, 3.0]
        );
        assert_eq!(top_magnitudes(&[-2.0]), [2.0, 0.0, 0.0]);
        let mut top = [5.0, 4.0, 1.0];
        insert_top(&mut top, 4.5);
        assert_eq!(top, [5.0, 4.5, 4.0]);
        insert_top(&mut top, 9.0);
        assert_eq!(top, [9.0, 5.0, 4.5]);
    }

    #[test]
    fn layer_means_over_sequences() {
        let s = |sequence, top, median| SequenceMagnitudes {
            sequence,
            top,
            median,
        };
        let m = LayerMagnitudes::of(&[s(0, [10.0, 4.0, 2.0], 1.0), s(1, [20.0, 6.0, 4.0], 3.0)]);
        assert_eq!(
            (m.sequences, m.top1, m.top2, m.top3, m.median),
            (2, 15.0, 5.0, 3.0, 2.0)
        );
    }
}
