//! Records of their own lengths on the CPU against PyTorch (`support/records.rs` says how).

use layerstream_runtime::backend::Backend;
use layerstream_runtime::cpu::CpuBackend;
use layerstream_tests::records::check_records_against_pytorch;

#[test]
fn records_of_their_own_lengths_match_pytorch_at_every_point_and_in_the_head() {
    check_records_against_pytorch(&Backend::Cpu(CpuBackend::new(Some(2))), "cpu", false);
}
