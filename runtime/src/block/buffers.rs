//! The micro-batch buffers the decoder block names. The block says "norm `Hidden` into
//! `Normed`"; each backend maps the names to its own storage (host slices, device views), so
//! the step order is written once and the backends never see which sublayer they serve.

/// A buffer of one micro-batch of `rows` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buf {
    /// `(rows, hidden)`: the micro-batch's hidden states (the residual stream), in place.
    Hidden,
    /// `(rows, hidden)`: a norm's output (the attention's, then the MLP's input).
    Normed,
    /// `(rows, heads * head_dim)`.
    Q,
    /// `(rows, kv_heads * head_dim)`.
    K,
    /// `(rows, kv_heads * head_dim)`.
    V,
    /// `(rows, heads * head_dim)`: the heads' output, the input of o_proj.
    Attn,
    /// `(rows, hidden)`: a sublayer's output before the residual add.
    SublayerOut,
    /// `(rows, hidden)`: the feed-forward output; the split layer's accumulator when the
    /// layer's experts run in several parts, `SublayerOut` otherwise.
    FeedForwardOut,
    /// `(rows, dense intermediate)`.
    Gate,
    /// `(rows, dense intermediate)`.
    Up,
    /// `(rows, projected width)`: an in-projection's output (gated attention's q_proj;
    /// DeltaNet's in_proj_qkvz, then in_proj_ba, then the convolution's output).
    Projected,
    /// `(rows, gate width)`: the mixer's output gate (gated attention's gate, DeltaNet's z).
    MixerGate,
    /// `(rows, conv channels)`: DeltaNet's convolution input, queries | keys | values.
    Mixed,
    /// `(rows, value heads)`: DeltaNet's b.
    Beta,
    /// `(rows, value heads)`: DeltaNet's a.
    Decay,
    /// `(rows, value heads * value_dim)`: the delta rule's output.
    DeltaCore,
}

/// Storage for every [`Buf`], each already cut to the micro-batch's rows.
pub(crate) struct BufferSet<T> {
    /// `(rows, hidden)`.
    pub hidden: T,
    /// `(rows, hidden)`.
    pub normed: T,
    /// `(rows, heads * head_dim)`.
    pub q: T,
    /// `(rows, kv_heads * head_dim)`.
    pub k: T,
    /// `(rows, kv_heads * head_dim)`.
    pub v: T,
    /// `(rows, heads * head_dim)`.
    pub attn: T,
    /// `(rows, hidden)`.
    pub sublayer_out: T,
    /// `(rows, dense intermediate)`.
    pub gate: T,
    /// `(rows, dense intermediate)`.
    pub up: T,
    /// `(rows, hidden)`: a split layer's feed-forward accumulator.
    pub accumulator: Option<T>,
    /// The mixer's own buffers (empty where the layer's mixer does not use them).
    pub mixer: MixerBuffers<T>,
}

/// The buffers only gated attention and the Gated DeltaNet use.
pub(crate) struct MixerBuffers<T> {
    /// `(rows, projected width)`.
    pub projected: T,
    /// `(rows, gate width)`.
    pub mixer_gate: T,
    /// `(rows, conv channels)`.
    pub mixed: T,
    /// `(rows, value heads)`.
    pub beta: T,
    /// `(rows, value heads)`.
    pub decay: T,
    /// `(rows, value width)`.
    pub delta_core: T,
}

const SLOTS: usize = 16;
const ACCUMULATOR: usize = 9;

impl<T> BufferSet<T> {
    fn index(&self, buffer: Buf) -> usize {
        match buffer {
            Buf::Hidden => 0,
            Buf::Normed => 1,
            Buf::Q => 2,
            Buf::K => 3,
            Buf::V => 4,
            Buf::Attn => 5,
            Buf::SublayerOut => 6,
            Buf::FeedForwardOut if self.accumulator.is_some() => ACCUMULATOR,
            Buf::FeedForwardOut => 6,
            Buf::Gate => 7,
            Buf::Up => 8,
            Buf::Projected => 10,
            Buf::MixerGate => 11,
            Buf::Mixed => 12,
            Buf::Beta => 13,
            Buf::Decay => 14,
            Buf::DeltaCore => 15,
        }
    }

    fn slots(&mut self) -> [Option<&mut T>; SLOTS] {
        [
            Some(&mut self.hidden),
            Some(&mut self.normed),
            Some(&mut self.q),
            Some(&mut self.k),
            Some(&mut self.v),
            Some(&mut self.attn),
            Some(&mut self.sublayer_out),
            Some(&mut self.gate),
            Some(&mut self.up),
            self.accumulator.as_mut(),
            Some(&mut self.mixer.projected),
            Some(&mut self.mixer.mixer_gate),
            Some(&mut self.mixer.mixed),
            Some(&mut self.mixer.beta),
            Some(&mut self.mixer.decay),
            Some(&mut self.mixer.delta_core),
        ]
    }

    /// One buffer to read or write.
    pub fn get(&mut self, buffer: Buf) -> &mut T {
        let index = self.index(buffer);
        self.slots()[index]
            .take()
            .expect("FeedForwardOut names the accumulator only when there is one")
    }

    /// Buffers read by an op and the one it writes, which must be another buffer.
    pub fn split<const R: usize>(&mut self, reads: [Buf; R], write: Buf) -> ([&T; R], &mut T) {
        let write_index = self.index(write);
        let read_indices = reads.map(|b| self.index(b));
        assert!(
            !read_indices.contains(&write_index),
            "an op reads the buffer it writes ({write:?}; a block bug)"
        );
        let mut read_slots: [Option<&T>; R] = [None; R];
        let mut write_slot = None;
        for (index, slot) in self.slots().into_iter().enumerate() {
            let Some(slot) = slot else { continue };
            if index == write_index {
                write_slot = Some(slot);
                continue;
            }
            let shared: &T = slot;
            for (read, &wanted) in read_slots.iter_mut().zip(&read_indices) {
                if wanted == index {
                    *read = Some(shared);
                }
            }
        }
        (
            read_slots.map(|s| s.expect("every read buffer exists")),
            write_slot.expect("the written buffer exists"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(accumulator: bool) -> BufferSet<u8> {
        BufferSet {
            hidden: 0,
            normed: 1,
            q: 2,
            k: 3,
            v: 4,
            attn: 5,
            sublayer_out: 6,
            gate: 7,
            up: 8,
            accumulator: accumulator.then_some(9),
            mixer: MixerBuffers {
                projected: 10,
                mixer_gate: 11,
                mixed: 12,
                beta: 13,
                decay: 14,
                delta_core: 15,
            },
        }
    }

    #[test]
    fn feed_forward_out_is_the_accumulator_when_there_is_one() {
        assert_eq!(*set(false).get(Buf::FeedForwardOut), 6);
        assert_eq!(*set(true).get(Buf::FeedForwardOut), 9);
    }

    #[test]
    fn split_hands_out_the_named_buffers() {
        let mut buffers = set(true);
        let ([q, k, v], attn) = buffers.split([Buf::Q, Buf::K, Buf::V], Buf::Attn);
        assert_eq!((*q, *k, *v, *attn), (2, 3, 4, 5));
        let ([hidden, also_hidden], out) =
            buffers.split([Buf::Hidden, Buf::Hidden], Buf::FeedForwardOut);
        assert_eq!((*hidden, *also_hidden, *out), (0, 0, 9));
        let ([mixed, gate], core) = buffers.split([Buf::Mixed, Buf::MixerGate], Buf::DeltaCore);
        assert_eq!((*mixed, *gate, *core), (12, 11, 15));
    }

    #[test]
    #[should_panic(expected = "reads the buffer it writes")]
    fn split_refuses_an_op_writing_what_it_reads() {
        set(false).split([Buf::SublayerOut], Buf::FeedForwardOut);
    }
}
