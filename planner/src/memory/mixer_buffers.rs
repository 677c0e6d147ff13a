//! The token mixer's share of the buffer manifest: the row widths of the decoder block's
//! buffers for a layer's mixer (softmax attention, gated attention or a Gated DeltaNet), and
//! the Gated DeltaNet's recurrent state and chunked-form buffers.

use super::regions::{BufferName, ScratchFor};
use super::shapes::{DELTA_CHUNK, LayerShapes, MixerShapes};

/// Row widths (elements per token) of the block buffers a layer's mixer uses; 0 for a
/// buffer the mixer does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockWidths {
    /// `Q`: the queries (attention), or the convolved queries of every key head (DeltaNet).
    pub q: usize,
    /// `K`: the keys.
    pub k: usize,
    /// `V`: the values.
    pub v: usize,
    /// `Attn`: the input of the output projection.
    pub attn: usize,
    /// `Projected`: an in-projection's output (gated attention's q_proj; DeltaNet's
    /// in_proj_qkvz, then in_proj_ba, then the convolution's output).
    pub projected: usize,
    /// `MixerGate`: the output gate (gated attention's gate, DeltaNet's z).
    pub mixer_gate: usize,
    /// `Mixed`: DeltaNet's convolution input, queries | keys | values.
    pub mixed: usize,
    /// `Beta` and `Decay`: one value per value head (DeltaNet's b and a).
    pub per_value_head: usize,
    /// `DeltaCore`: the delta rule's output, every value head.
    pub delta_core: usize,
}

impl BlockWidths {
    /// The widths for `shapes`' mixer.
    pub fn of(shapes: &LayerShapes) -> Self {
        Self::for_mixer(shapes.mixer, shapes.q_width, shapes.kv_width)
    }

    /// The widths for `mixer` with attention of `q` query and `kv` key/value width.
    pub fn for_mixer(mixer: MixerShapes, q: usize, kv: usize) -> Self {
        let attention = BlockWidths {
            q,
            k: kv,
            v: kv,
            attn: q,
            projected: 0,
            mixer_gate: 0,
            mixed: 0,
            per_value_head: 0,
            delta_core: 0,
        };
        match mixer {
            MixerShapes::Attention { gated: false } => attention,
            MixerShapes::Attention { gated: true } => BlockWidths {
                projected: 2 * q,
                mixer_gate: q,
                ..attention
            },
            MixerShapes::DeltaNet(d) => BlockWidths {
                q: d.key_width(),
                k: d.key_width(),
                v: d.value_width(),
                attn: d.value_width(),
                projected: d.qkvz_width(),
                mixer_gate: d.value_width(),
                mixed: d.conv_channels(),
                per_value_head: d.value_heads,
                delta_core: d.value_width(),
            },
        }
    }

    /// Every block buffer of the mixer with its width.
    pub fn buffers(&self) -> [(BufferName, usize); 10] {
        use BufferName::*;
        [
            (Q, self.q),
            (K, self.k),
            (V, self.v),
            (Attn, self.attn),
            (Projected, self.projected),
            (MixerGate, self.mixer_gate),
            (Mixed, self.mixed),
            (Beta, self.per_value_head),
            (Decay, self.per_value_head),
            (DeltaCore, self.delta_core),
        ]
    }
}

/// The Gated DeltaNet's buffers beyond the block's for a micro-batch of `rows` tokens: the
/// recurrent state of every sequence and value head `(sequences, value_heads, key_dim,
/// value_dim)` (both backends), and on the GPU the chunked form's head-major buffers over
/// the rows padded to whole chunks of 64 per sequence (`P` rows, `H` value heads):
/// `DeltaChunkQ`, `DeltaChunkK` `(H, P, key_dim)`; `DeltaChunkW`, `DeltaChunkU`
/// `(H, P, value_dim + key_dim)`; `DeltaChunkT`, `DeltaChunkA` `(H, P, 64)`;
/// `DeltaChunkG`, `DeltaChunkBeta` `(H, P)`; `DeltaChunkOut` `(H, P, value_dim)`.
pub(super) fn delta_net_buffers(
    shapes: &LayerShapes,
    rows: usize,
    backend: ScratchFor,
) -> Vec<(BufferName, usize)> {
    use BufferName::*;
    let MixerShapes::DeltaNet(d) = shapes.mixer else {
        return Vec::new();
    };
    let (h, dk, dv) = (d.value_heads, d.key_dim, d.value_dim);
    let mut buffers = vec![(DeltaState, d.sequences(rows) * h * dk * dv)];
    if backend == ScratchFor::Gpu {
        let hp = h * d.padded_rows(rows);
        buffers.extend([
            (DeltaChunkQ, hp * dk),
            (DeltaChunkK, hp * dk),
            (DeltaChunkW, hp * (dv + dk)),
            (DeltaChunkU, hp * (dv + dk)),
            (DeltaChunkT, hp * DELTA_CHUNK),
            (DeltaChunkA, hp * DELTA_CHUNK),
            (DeltaChunkG, hp),
            (DeltaChunkBeta, hp),
            (DeltaChunkOut, hp * dv),
        ]);
    }
    buffers
}
