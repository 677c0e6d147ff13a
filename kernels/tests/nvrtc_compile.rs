//! Every kernel module compiles with NVRTC for the architectures layerstream targets. Needs
//! only libnvrtc (no GPU); without it the test says so and passes, unless
//! LAYERSTREAM_REQUIRE_GPU=1, where it fails.

use layerstream_kernels::compile::{
    compile_to_cubin, compile_to_ptx, nvrtc_available, nvrtc_version,
};
use layerstream_kernels::sources::{ALL_MODULES, ATTENTION_MMA, HALF_GUARD};

#[test]
fn every_module_compiles_for_t4_and_hopper() {
    if !nvrtc_available() {
        assert!(
            std::env::var("LAYERSTREAM_REQUIRE_GPU").as_deref() != Ok("1"),
            "LAYERSTREAM_REQUIRE_GPU=1 but libnvrtc is not loadable"
        );
        eprintln!(
            "skipped: libnvrtc not found (set LD_LIBRARY_PATH to a CUDA lib folder to run this)"
        );
        return;
    }
    eprintln!("NVRTC {:?}", nvrtc_version().unwrap());
    for arch in ["sm_75", "sm_80", "sm_90"] {
        for module in ALL_MODULES {
            let cubin = compile_to_cubin(&module, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                cubin.starts_with(b"\x7fELF"),
                "{} for {arch} is not an ELF cubin",
                module.name
            );
        }
    }
}

/// The PTX of kernel `name`: from its `.entry` to the next one.
fn kernel_body<'a>(ptx: &'a str, name: &str) -> &'a str {
    let start = ptx
        .find(&format!(".entry {name}("))
        .unwrap_or_else(|| panic!("{name} is not in the PTX"));
    let rest = &ptx[start + 1..];
    &rest[..rest.find(".entry ").unwrap_or(rest.len())]
}

/// The f16 attention's products are tensor-core instructions in the T4 build (two m16n8k8
/// per product, sm_75) and in the sm_80+ build (one m16n8k16), and the bf16 kernel keeps its
/// m16n8k16: the T4 path is not left to the f32 fallback by an architecture guard.
#[test]
fn f16_attention_runs_on_tensor_cores_from_sm_75() {
    if !nvrtc_available() {
        assert!(
            std::env::var("LAYERSTREAM_REQUIRE_GPU").as_deref() != Ok("1"),
            "LAYERSTREAM_REQUIRE_GPU=1 but libnvrtc is not loadable"
        );
        eprintln!("skipped: libnvrtc not found");
        return;
    }
    let t4 = compile_to_ptx(&ATTENTION_MMA, "compute_75").unwrap();
    let f16_t4 = kernel_body(&t4, "attention_mma_f16_kernel");
    // Unrolled: (8 key tiles x 8 head chunks + 4 key chunks x 16 head tiles) products of two
    // m16n8k8 each.
    assert_eq!(
        f16_t4
            .matches("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32")
            .count(),
        256,
        "the T4 build's f16 products are m16n8k8 instructions"
    );
    assert!(!f16_t4.contains("m16n8k16"), "m16n8k16 f16 needs sm_80");
    assert!(f16_t4.contains("cvt.rn.f16.f32"));
    let ampere = compile_to_ptx(&ATTENTION_MMA, "compute_80").unwrap();
    assert!(
        kernel_body(&ampere, "attention_mma_f16_kernel")
            .contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32")
    );
    assert!(
        kernel_body(&ampere, "attention_mma_kernel")
            .contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
    );
    // K/V tiles: asynchronous copies on sm_80+ (none on sm_75, which has no cp.async), P V's
    // B operands through ldmatrix.trans on both.
    for name in ["attention_mma_kernel", "attention_mma_f16_kernel"] {
        let body = kernel_body(&ampere, name);
        assert!(body.contains("cp.async.cg.shared.global"), "{name} sm_80");
        assert!(body.contains("cp.async.wait_group 1"), "{name} sm_80");
        assert!(
            body.contains("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"),
            "{name} sm_80"
        );
    }
    assert!(!f16_t4.contains("cp.async"), "cp.async needs sm_80");
    assert!(f16_t4.contains("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"));
    for name in ["attention_kv_bf16_kernel", "attention_kv_f16_kernel"] {
        kernel_body(&t4, name);
    }
    let guard = compile_to_ptx(&HALF_GUARD, "compute_75").unwrap();
    for name in [
        "f32_to_f16_guarded_kernel",
        "f16_weights_kernel",
        "f16_overflow_rows_kernel",
    ] {
        kernel_body(&guard, name);
    }
}
