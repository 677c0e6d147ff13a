//! NVRTC: CUDA C source -> cubin for one GPU architecture, or PTX for a virtual one.

use crate::error::{KernelError, Result};
use crate::sources::ModuleSource;
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;

/// Whether libnvrtc can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_available() {
        return Err(KernelError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| KernelError::Unsupported(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

/// Compiles `module` for `arch` (e.g. `sm_90`) and returns the cubin.
pub fn compile_to_cubin(module: &ModuleSource, arch: &str) -> Result<Vec<u8>> {
    compile(module, arch, |program| {
        // SAFETY: `compile` hands over a successfully compiled, live program.
        unsafe { cubin(program) }
    })
}

/// Compiles `module` for a virtual `arch` (e.g. `compute_75`) and returns the PTX text: the
/// driver compiles it for whatever GPU loads it, so a newer GPU can run the code an older
/// architecture gets (`LAYERSTREAM_KERNEL_ARCH`, see `Gpu::open`).
pub fn compile_to_ptx(module: &ModuleSource, arch: &str) -> Result<String> {
    compile(module, arch, |program| {
        // SAFETY: as above.
        let chars = unsafe { result::get_ptx(program) }.map_err(|e| e.0)?;
        let text: String = chars.iter().map(|&c| c as u8 as char).collect();
        Ok(text.trim_end_matches('\0').to_string())
    })
}

fn compile<T>(
    module: &ModuleSource,
    arch: &str,
    output: impl FnOnce(sys::nvrtcProgram) -> Result<T, sys::nvrtcResult>,
) -> Result<T> {
    if !nvrtc_available() {
        return Err(KernelError::NoNvrtc);
    }
    let compile_error = |log: String| KernelError::Compile {
        module: module.name,
        arch: arch.to_string(),
        log,
    };
    let source = CString::new(module.full_source()).expect("kernel sources hold no NUL");
    let name = CString::new(format!("{}.cu", module.name)).expect("no NUL");
    let program = result::create_program(&source, Some(&name))
        .map_err(|e| compile_error(format!("{e:?}")))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-lineinfo".to_string(),
    ];
    // SAFETY: `program` is a live NVRTC program until destroy_program below.
    unsafe {
        let compiled = result::compile_program(program, &options);
        let outcome = match compiled {
            Ok(()) => {
                output(program).map_err(|e| compile_error(format!("cannot read the output: {e:?}")))
            }
            Err(_) => {
                let log = result::get_program_log(program)
                    .map(|chars| chars.iter().map(|&c| c as u8 as char).collect::<String>())
                    .unwrap_or_else(|e| format!("(no log: {e:?})"));
                Err(compile_error(log.trim_end_matches('\0').to_string()))
            }
        };
        let _ = result::destroy_program(program);
        outcome
    }
}

/// The cubin of a compiled program.
///
/// # Safety
/// `program` must be a successfully compiled, live NVRTC program.
unsafe fn cubin(program: sys::nvrtcProgram) -> Result<Vec<u8>, sys::nvrtcResult> {
    let mut size = 0usize;
    // SAFETY: per this function's contract.
    let status = unsafe { sys::nvrtcGetCUBINSize(program, &mut size) };
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(status);
    }
    let mut bytes = vec![0u8; size];
    // SAFETY: `bytes` has the size NVRTC reported.
    let status = unsafe { sys::nvrtcGetCUBIN(program, bytes.as_mut_ptr().cast()) };
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(status);
    }
    Ok(bytes)
}
