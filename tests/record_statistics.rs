//! `analyze --per-record` on the CPU: each record's statistics in a ragged run equal the
//! record's alone (`support/record_statistics.rs` says what is compared).

use layerstream_runtime::backend::Backend;
use layerstream_runtime::cpu::CpuBackend;
use layerstream_tests::record_statistics::check_records_match_each_alone;

#[test]
fn each_records_statistics_are_its_own_alone() {
    check_records_match_each_alone(&Backend::Cpu(CpuBackend::new(Some(2))));
}
