//! Where a point's values reach the threshold: a bit per (dimension, token). Most dimensions
//! never reach it, so only the rows of those that do are held: a dense `(width, words)`
//! buffer of zeros (64 MiB per point and layer at 128 x 2048 tokens and width 2048, 512 MiB at
//! 1024 sequences) cost the report most of its time in page clearing.

/// Position bits `(width, words)`: bit `t % 32` of word `t / 32` of dimension `d`'s row for
/// the workload's token `t`. A row is held once any of its bits is set; absent rows are
/// zeros, and a held row is never all zeros (so equal bits are equal values). `words == 0`:
/// the point keeps no positions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PositionBits {
    words: usize,
    /// `(width)`: each dimension's row `(words)`, where it has a bit.
    rows: Vec<Option<Box<[u32]>>>,
}

impl PositionBits {
    /// No bits yet for `width` dimensions of `words` words each (`words == 0`: none kept).
    pub fn new(width: usize, words: usize) -> Self {
        PositionBits {
            words,
            rows: match words {
                0 => Vec::new(),
                _ => vec![None; width],
            },
        }
    }

    /// From a dense `(width, words)` buffer (a device's download): only rows with a bit.
    pub fn from_dense(width: usize, words: usize, dense: &[u32]) -> Self {
        let mut bits = PositionBits::new(width, words);
        if words > 0 {
            assert_eq!(dense.len(), width * words, "position bits (width, words)");
            for (d, row) in dense.chunks_exact(words).enumerate() {
                bits.set_row(d, row);
            }
        }
        bits
    }

    /// Words per dimension (0 when positions are not kept).
    pub fn words(&self) -> usize {
        self.words
    }

    /// Whether positions are kept at all.
    pub fn is_kept(&self) -> bool {
        self.words > 0
    }

    /// Dimension `d`'s row, `None` when it has no bit.
    pub fn row(&self, d: usize) -> Option<&[u32]> {
        self.rows.get(d).and_then(|row| row.as_deref())
    }

    /// The dimensions with a bit, ascending, with their rows.
    pub fn held_rows(&self) -> impl Iterator<Item = (usize, &[u32])> {
        self.rows
            .iter()
            .enumerate()
            .filter_map(|(d, row)| row.as_deref().map(|row| (d, row)))
    }

    /// Sets the bit of token `token` in dimension `d`.
    pub fn set(&mut self, d: usize, token: usize) {
        let words = self.words;
        let row = self.rows[d].get_or_insert_with(|| vec![0; words].into_boxed_slice());
        row[token / 32] |= 1 << (token % 32);
    }

    /// OR-s `bits` (`words` words) into dimension `d`'s row; a row of zeros adds nothing.
    pub fn set_row(&mut self, d: usize, bits: &[u32]) {
        assert_eq!(bits.len(), self.words, "a position row has `words` words");
        if bits.iter().all(|&w| w == 0) {
            return;
        }
        match &mut self.rows[d] {
            Some(row) => row.iter_mut().zip(bits).for_each(|(o, &b)| *o |= b),
            empty => *empty = Some(bits.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_held_only_where_a_bit_is_set() {
        let mut bits = PositionBits::new(4, 2);
        bits.set(2, 33);
        bits.set(2, 0);
        assert_eq!(bits.row(2), Some(&[1u32, 2][..]));
        assert_eq!(bits.row(0), None);
        assert_eq!(bits.held_rows().map(|(d, _)| d).collect::<Vec<_>>(), [2]);
        let dense = [0, 0, 0, 0, 1, 2, 0, 0];
        assert_eq!(PositionBits::from_dense(4, 2, &dense), bits);
        assert_eq!(
            PositionBits::from_dense(4, 2, &dense).held_rows().count(),
            1
        );
        bits.set_row(3, &[0, 0]);
        assert_eq!(bits.row(3), None);
        bits.set_row(2, &[4, 0]);
        assert_eq!(bits.row(2), Some(&[5u32, 2][..]));
        assert_ne!(bits, PositionBits::new(4, 2));
        assert!(!PositionBits::new(4, 0).is_kept());
        assert_eq!(PositionBits::from_dense(4, 0, &[]), PositionBits::new(4, 0));
    }
}
