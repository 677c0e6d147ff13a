//! Where a run takes memory. Each region a backend allocates (hidden states, a layer's
//! weights, a micro-batch's buffers, statistics) is first reserved against the run's budget
//! (`--vram` minus the context overhead on a GPU, `--ram` on the CPU); the reservation is
//! released when the buffer is dropped. A reservation past the budget, the driver's out of
//! memory, or an injected fault (`LAYERSTREAM_FAULT_ALLOC=N`: the N-th reservation of the
//! process fails) is an out-of-memory error the executor answers by halving the micro-batch.

use crate::error::{Result, RuntimeError};
use crate::sequences::Sequences;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

static RESERVATIONS: AtomicUsize = AtomicUsize::new(0);

/// Bytes reserved against a budget.
#[derive(Debug)]
pub struct Budget {
    limit: Option<u64>,
    used: AtomicU64,
    peak: AtomicU64,
}

/// A reservation; returns its bytes to the budget when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl Budget {
    /// A budget of `limit` bytes (`None`: only the driver limits).
    pub fn new(limit: Option<u64>) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    /// Reserves `bytes` for `what`, or fails with [`RuntimeError::OutOfMemory`].
    pub fn reserve(self: &Arc<Self>, what: &str, bytes: u64) -> Result<Reservation> {
        let count = RESERVATIONS.fetch_add(1, Ordering::SeqCst) + 1;
        let injected = std::env::var("LAYERSTREAM_FAULT_ALLOC")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n == count);
        if injected {
            return Err(RuntimeError::OutOfMemory(format!(
                "{what} ({bytes} bytes): allocation {count} failed by LAYERSTREAM_FAULT_ALLOC"
            )));
        }
        let used = self.used.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if let Some(limit) = self.limit.filter(|&limit| used > limit) {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(RuntimeError::OutOfMemory(format!(
                "{what} needs {bytes} bytes with {} already in use; the budget is {limit}",
                used - bytes
            )));
        }
        self.peak.fetch_max(used, Ordering::SeqCst);
        Ok(Reservation {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Bytes still free under the limit (`None`: no limit).
    pub fn available(&self) -> Option<u64> {
        self.limit
            .map(|limit| limit.saturating_sub(self.used.load(Ordering::SeqCst)))
    }

    /// The limit (`None`: only the machine limits).
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Most bytes reserved at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Whether an error is an out-of-memory the micro-batch can be halved for: a reservation
/// past the budget, an injected fault, or the CUDA driver's out of memory.
pub fn is_out_of_memory(error: &RuntimeError) -> bool {
    match error {
        RuntimeError::OutOfMemory(_) => true,
        RuntimeError::Gpu(layerstream_kernels::KernelError::Driver(driver)) => driver.0
            == layerstream_kernels::cudarc::driver::sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY,
        _ => false,
    }
}

/// Decides the next micro-batch (tokens) after an out-of-memory at `layer`: half of it, or
/// an error when it already holds only the longest sequence.
pub fn halve_micro_batch(
    layer: usize,
    micro_batch: usize,
    error: &RuntimeError,
    sequences: &Sequences,
) -> Result<usize> {
    let longest = sequences.longest();
    if micro_batch / 2 < longest {
        return Err(RuntimeError::InvalidRequest(format!(
            "layer {layer} does not fit even with one sequence ({longest} tokens) per micro-batch ({error}); raise --vram (or --ram) or use a shorter --seq-len"
        )));
    }
    Ok(micro_batch / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_against_the_budget_and_return_on_drop() {
        let budget = Budget::new(Some(100));
        let a = budget.reserve("a", 60).unwrap();
        assert!(is_out_of_memory(&budget.reserve("b", 50).unwrap_err()));
        drop(a);
        let _b = budget.reserve("b", 50).unwrap();
        assert_eq!(budget.peak(), 60);
        let unlimited = Budget::new(None);
        let _big = unlimited.reserve("big", u64::MAX / 4).unwrap();
    }

    #[test]
    fn halving_stops_below_one_sequence() {
        let oom = RuntimeError::OutOfMemory("x".into());
        let packed = Sequences::uniform(8, 128);
        assert_eq!(
            halve_micro_batch(3, 4 * 128, &oom, &packed).unwrap(),
            2 * 128
        );
        // 3 sequences halve to 1.5, which holds one.
        assert_eq!(halve_micro_batch(3, 3 * 128, &oom, &packed).unwrap(), 192);
        let message = halve_micro_batch(3, 128, &oom, &packed)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("layer 3") && message.contains("one sequence"),
            "{message}"
        );
        // Records of their own lengths: never below the longest.
        let records = Sequences::from_lengths([50, 300, 120]);
        assert_eq!(halve_micro_batch(0, 800, &oom, &records).unwrap(), 400);
        assert!(halve_micro_batch(0, 500, &oom, &records).is_err());
    }
}
