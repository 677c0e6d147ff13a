//! Where the planner keeps the hidden states: on the device unless that leaves under half
//! the micro-batch pinned host memory allows.

use super::tests::{dense, workload};
use super::*;

#[test]
fn hidden_states_go_to_the_host_when_the_device_leaves_small_micro_batches() {
    let (inventory, shapes) = dense();
    // 64 sequences (512 MiB of hidden states), aiming for 32 per micro-batch.
    let workload = Workload {
        sequences: 64,
        target_micro_batch_tokens: 32 * 2048,
        ..workload()
    };
    let plan_with = |budget: u64, host: u64| {
        plan(
            &inventory,
            &shapes,
            &workload,
            GemmDtype::Bf16,
            Some(budget),
            Some(host),
            DEFAULT_OVERHEAD_BYTES,
        )
    };
    // Room for the whole target next to the hidden states: they stay on the device.
    let roomy = plan_with(80 << 30, 80 << 30).unwrap();
    assert_eq!(roomy.hidden_placement, HiddenPlacement::Device);
    assert_eq!(roomy.micro_batch_sequences, 32);
    let mut moved = 0;
    for step in 1..=48 {
        let budget = DEFAULT_OVERHEAD_BYTES + step * (64 << 20);
        // A host budget below the hidden states: the device placement alone (or a file).
        let Ok(device_only) = plan_with(budget, 256 << 20) else {
            continue;
        };
        let Ok(chosen) = plan_with(budget, 80 << 30) else {
            panic!("{budget}: a plan without pinned host memory but none with it");
        };
        assert!(chosen.peak_bytes <= budget);
        if device_only.hidden_placement != HiddenPlacement::Device {
            continue;
        }
        match chosen.hidden_placement {
            HiddenPlacement::PinnedHost => {
                moved += 1;
                assert!(
                    chosen.micro_batch_sequences >= 2 * device_only.micro_batch_sequences,
                    "{budget}: host {} against device {}",
                    chosen.micro_batch_sequences,
                    device_only.micro_batch_sequences
                );
            }
            HiddenPlacement::Device => assert_eq!(
                chosen.micro_batch_sequences, device_only.micro_batch_sequences,
                "{budget}"
            ),
            HiddenPlacement::Disk => panic!("{budget}: a file although the host has room"),
        }
    }
    assert!(moved > 0, "no budget moved the hidden states to the host");
}
