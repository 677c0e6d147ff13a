//! How many sequences go through a layer at once.
//!
//! Until the memory model of the planner exists this is a token target: enough rows to keep
//! the GEMMs efficient, few enough that the activations of one micro-batch stay small next
//! to the hidden states of the whole workload.

/// Tokens per micro-batch of a run without a memory plan (the CPU backend's default).
pub const UNPLANNED_MICRO_BATCH_TOKENS: usize = 8192;

/// Tokens per micro-batch a memory plan (`--vram`) aims for: the budget usually decides
/// first. Large micro-batches keep the GEMMs efficient (each routed expert of a MoE layer sees
/// about tokens x top_k / experts rows) and amortise the per-micro-batch launches and copies.
pub const PLANNED_MICRO_BATCH_TOKENS: usize = 65536;

/// Sequences per micro-batch so that a micro-batch holds about `target_tokens` tokens:
/// at least one sequence, at most all of them.
pub fn micro_batch_sequences(num_sequences: usize, seq_len: usize, target_tokens: usize) -> usize {
    (target_tokens / seq_len.max(1)).clamp(1, num_sequences.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batch_stays_between_one_and_all_sequences() {
        assert_eq!(micro_batch_sequences(16, 2048, 8192), 4);
        assert_eq!(micro_batch_sequences(16, 32768, 8192), 1);
        assert_eq!(micro_batch_sequences(3, 16, 8192), 3);
        assert_eq!(micro_batch_sequences(0, 16, 8192), 1);
    }
}
