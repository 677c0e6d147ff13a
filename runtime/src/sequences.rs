//! Where each sequence of a workload sits in its rows: sequence `s` holds rows
//! `offsets[s]..offsets[s + 1]` of the hidden states (one row per token). Packed workloads
//! have sequences of one length; per-record workloads (`--per-record`) one sequence per
//! record, each of its own length, never padded. A micro-batch is a range of whole
//! sequences, described by the same type with offsets from 0 ([`Sequences::slice`]).

use std::ops::Range;

/// The sequences of a workload or micro-batch, as row offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequences {
    /// `(count + 1)`: the first row of each sequence, then the row count.
    offsets: Vec<usize>,
}

impl Default for Sequences {
    /// No sequences.
    fn default() -> Self {
        Sequences { offsets: vec![0] }
    }
}

impl Sequences {
    /// `count` sequences of `len` tokens.
    pub fn uniform(count: usize, len: usize) -> Self {
        Sequences {
            offsets: (0..=count).map(|s| s * len).collect(),
        }
    }

    /// Sequences of these lengths, in order.
    pub fn from_lengths(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut offsets = vec![0];
        for len in lengths {
            offsets.push(offsets.last().expect("starts with 0") + len);
        }
        Sequences { offsets }
    }

    /// How many sequences.
    pub fn count(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Rows (tokens) in all.
    pub fn tokens(&self) -> usize {
        *self.offsets.last().expect("starts with 0")
    }

    /// Tokens of sequence `s`.
    pub fn len_of(&self, s: usize) -> usize {
        self.offsets[s + 1] - self.offsets[s]
    }

    /// First row of sequence `s`.
    pub fn start(&self, s: usize) -> usize {
        self.offsets[s]
    }

    /// The rows of sequences `range`.
    pub fn rows(&self, range: Range<usize>) -> Range<usize> {
        self.offsets[range.start]..self.offsets[range.end]
    }

    /// The rows of sequence `s`.
    pub fn span(&self, s: usize) -> Range<usize> {
        self.offsets[s]..self.offsets[s + 1]
    }

    /// Every sequence's rows, in order.
    pub fn spans(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.offsets.windows(2).map(|w| w[0]..w[1])
    }

    /// Every sequence's length, in order.
    pub fn lengths(&self) -> impl Iterator<Item = usize> + '_ {
        self.offsets.windows(2).map(|w| w[1] - w[0])
    }

    /// The first row of every sequence, then the row count (`count + 1` values).
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// The longest sequence's length (0 for none).
    pub fn longest(&self) -> usize {
        self.lengths().max().unwrap_or(0)
    }

    /// The shortest sequence's length (0 for none).
    pub fn shortest(&self) -> usize {
        self.lengths().min().unwrap_or(0)
    }

    /// The length every sequence has, if they all have one.
    pub fn uniform_len(&self) -> Option<usize> {
        let longest = self.longest();
        (self.lengths().all(|l| l == longest)).then_some(longest)
    }

    /// Sequences `range` as a micro-batch: offsets from 0.
    pub fn slice(&self, range: Range<usize>) -> Sequences {
        let base = self.offsets[range.start];
        Sequences {
            offsets: self.offsets[range.start..=range.end]
                .iter()
                .map(|o| o - base)
                .collect(),
        }
    }

    /// The sequence holding row `row`.
    pub fn sequence_of(&self, row: usize) -> usize {
        self.offsets.partition_point(|&o| o <= row) - 1
    }

    /// Each row's position within its sequence.
    pub fn positions(&self) -> Vec<u32> {
        self.lengths().flat_map(|len| 0..len as u32).collect()
    }

    /// How many sequences from `first` (at most up to `end`) make a micro-batch of at most
    /// `tokens` rows; at least one.
    pub fn batch_from(&self, first: usize, end: usize, tokens: usize) -> usize {
        let limit = self.offsets[first] + tokens;
        let fitting = self.offsets[first + 1..=end].partition_point(|&o| o <= limit);
        fitting.max(1)
    }
}

impl Sequences {
    /// The most rows any micro-batch of sequences `range` takes with a target of `tokens`.
    pub fn largest_batch(&self, range: Range<usize>, tokens: usize) -> usize {
        let (mut first, mut largest) = (range.start, 0);
        while first < range.end {
            let count = self.batch_from(first, range.end, tokens);
            largest = largest.max(self.rows(first..first + count).len());
            first += count;
        }
        largest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_lengths_and_slices() {
        let s = Sequences::from_lengths([3, 1, 4]);
        assert_eq!(
            (s.count(), s.tokens(), s.longest(), s.shortest()),
            (3, 8, 4, 1)
        );
        assert_eq!(s.rows(1..3), 3..8);
        assert_eq!(s.span(2), 4..8);
        assert_eq!(s.uniform_len(), None);
        assert_eq!(s.slice(1..3), Sequences::from_lengths([1, 4]));
        assert_eq!(s.positions(), vec![0, 1, 2, 0, 0, 1, 2, 3]);
        assert_eq!(Sequences::uniform(2, 5).uniform_len(), Some(5));
        assert_eq!(Sequences::uniform(2, 5), Sequences::from_lengths([5, 5]));
    }

    #[test]
    fn micro_batches_take_whole_sequences_up_to_the_token_target() {
        let s = Sequences::from_lengths([3, 1, 4, 2]);
        assert_eq!(s.batch_from(0, 4, 4), 2); // 3 + 1
        assert_eq!(s.batch_from(0, 4, 3), 1);
        assert_eq!(s.batch_from(0, 4, 2), 1, "a longer sequence alone");
        assert_eq!(s.batch_from(2, 4, 100), 2);
        assert_eq!(s.batch_from(1, 2, 100), 1, "never past the end");
        // Uniform: the target in sequences.
        let u = Sequences::uniform(7, 10);
        assert_eq!(u.batch_from(0, 7, 35), 3);
        assert_eq!(u.batch_from(6, 7, 35), 1);
        assert_eq!(u.largest_batch(0..7, 35), 30);
        assert_eq!(s.largest_batch(0..4, 5), 4);
        assert_eq!(s.largest_batch(0..4, 6), 6, "4 + 2");
    }
}
