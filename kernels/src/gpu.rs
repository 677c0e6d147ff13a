//! One GPU: context, compute stream, cuBLAS handle and the compiled modules.

use crate::cache::KernelCache;
use crate::compile::{compile_to_cubin, compile_to_ptx, nvrtc_available, nvrtc_version};
use crate::error::{KernelError, Result};
use crate::sources::ModuleSource;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An opened GPU with its compute stream.
pub struct Gpu {
    /// The CUDA context.
    pub context: Arc<CudaContext>,
    /// The stream every kernel and GEMM of the compute path runs on.
    pub stream: Arc<CudaStream>,
    /// cuBLAS, bound to `stream`.
    pub blas: CudaBlas,
    /// `(major, minor)` compute capability.
    pub compute_capability: (i32, i32),
    /// Device name as the driver reports it.
    pub name: String,
    /// NVRTC target, e.g. `sm_90`.
    pub arch: String,
    /// NVRTC version.
    pub nvrtc: (i32, i32),
    /// `LAYERSTREAM_KERNEL_ARCH`: kernels compiled as PTX for this older architecture and
    /// run through the driver's JIT, so that a newer GPU runs (and tests) the code paths an
    /// older one gets (`75`: a T4's); every arithmetic choice then follows it.
    pub kernel_arch: Option<(i32, i32)>,
    cache: KernelCache,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
}

/// GPUs the driver sees; an error without a driver (checked before cudarc could panic).
pub fn gpu_count() -> std::result::Result<usize, KernelError> {
    // SAFETY: only tries to dlopen libcuda by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(KernelError::NoDriver);
    }
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .map_err(|e| KernelError::NoDevice(format!("{e:?}")))
}

/// Why no GPU can be used, without touching cudarc where it would panic.
pub fn gpu_unavailable_reason() -> Option<KernelError> {
    // SAFETY: only tries to dlopen libcuda by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some(KernelError::NoDriver);
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => return Some(KernelError::NoDevice("0 devices".into())),
        Err(e) => return Some(KernelError::NoDevice(format!("{e:?}"))),
    }
    if !nvrtc_available() {
        return Some(KernelError::NoNvrtc);
    }
    // SAFETY: as above, for libcublas.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Some(KernelError::NoCublas);
    }
    None
}

impl Gpu {
    /// Opens device `ordinal`, after checking the driver, NVRTC and cuBLAS are present.
    pub fn open(ordinal: usize) -> Result<Self> {
        if let Some(reason) = gpu_unavailable_reason() {
            return Err(reason);
        }
        let context = CudaContext::new(ordinal)?;
        // Streams are ordered explicitly, with events where a buffer crosses them (the
        // executor's weight uploads: `FreeStaging`, `DeviceLayer::from_staged`). cudarc's
        // per-buffer tracking would add an event record and a stream wait per kernel
        // argument to every launch (measured: most of a MoE layer's host time).
        // SAFETY: every buffer used on two streams is ordered with events by its user.
        unsafe { context.disable_event_tracking() };
        let stream = context.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let compute_capability = context.compute_capability()?;
        let name = context.name()?;
        let kernel_arch = kernel_arch_from_env(compute_capability)?;
        Ok(Gpu {
            arch: format!("sm_{}{}", compute_capability.0, compute_capability.1),
            nvrtc: nvrtc_version()?,
            context,
            stream,
            blas,
            compute_capability,
            name,
            kernel_arch,
            cache: KernelCache::from_env(),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The compute capability the kernels are compiled for: the GPU's, or the older one
    /// `LAYERSTREAM_KERNEL_ARCH` names.
    pub fn kernel_capability(&self) -> (i32, i32) {
        self.kernel_arch.unwrap_or(self.compute_capability)
    }

    /// Whether the kernels do bf16 arithmetic (compute capability 8.0 and newer); a T4
    /// (sm_75) does not, so bf16 weights compute in f16 or f32 there.
    pub fn has_bf16_math(&self) -> bool {
        self.kernel_capability().0 >= 8
    }

    /// A kernel of `module`, compiling (or loading from the cache) the module on first use.
    pub fn function(&self, module: ModuleSource, name: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .expect("not poisoned")
            .get(&(module.name, name))
        {
            return Ok(f.clone());
        }
        let loaded = self.module(module)?;
        let function = loaded.load_function(name)?;
        self.functions
            .lock()
            .expect("not poisoned")
            .insert((module.name, name), function.clone());
        Ok(function)
    }

    /// Compiles or loads every module now (so the first layer does not pay for it).
    pub fn warm_up(&self, modules: &[ModuleSource]) -> Result<()> {
        for module in modules {
            self.module(*module)?;
        }
        Ok(())
    }

    fn module(&self, module: ModuleSource) -> Result<Arc<CudaModule>> {
        if let Some(m) = self.modules.lock().expect("not poisoned").get(module.name) {
            return Ok(m.clone());
        }
        if let Some((major, minor)) = self.kernel_arch {
            let ptx = compile_to_ptx(&module, &format!("compute_{major}{minor}"))?;
            let loaded = self.context.load_module(Ptx::from_src(ptx))?;
            self.modules
                .lock()
                .expect("not poisoned")
                .insert(module.name, loaded.clone());
            return Ok(loaded);
        }
        let source = module.full_source();
        let entry = KernelCache::entry_name(module.name, &source, &self.arch, self.nvrtc);
        let loaded = match self.cache.load(&entry) {
            // A cached cubin the driver refuses is compiled again, never trusted.
            Some(cubin) => match self.context.load_module(Ptx::from_binary(cubin)) {
                Ok(m) => m,
                Err(_) => self.compile_and_load(module, &entry)?,
            },
            None => self.compile_and_load(module, &entry)?,
        };
        self.modules
            .lock()
            .expect("not poisoned")
            .insert(module.name, loaded.clone());
        Ok(loaded)
    }

    fn compile_and_load(&self, module: ModuleSource, entry: &str) -> Result<Arc<CudaModule>> {
        let cubin = compile_to_cubin(&module, &self.arch)?;
        let loaded = self.context.load_module(Ptx::from_binary(cubin.clone()))?;
        self.cache.store(entry, &cubin);
        Ok(loaded)
    }
}

/// `LAYERSTREAM_KERNEL_ARCH` (`75`, `sm_75` or `compute_75`): an architecture no newer than
/// the GPU's to compile the kernels for.
fn kernel_arch_from_env(device: (i32, i32)) -> Result<Option<(i32, i32)>> {
    let Ok(text) = std::env::var("LAYERSTREAM_KERNEL_ARCH") else {
        return Ok(None);
    };
    let digits = text
        .trim()
        .trim_start_matches("compute_")
        .trim_start_matches("sm_");
    let parsed = match (digits.len(), digits.parse::<i32>()) {
        (2 | 3, Ok(n)) => Some((n / 10, n % 10)),
        _ => None,
    };
    match parsed {
        Some(arch) if arch <= device && arch >= (7, 5) => Ok(Some(arch)),
        _ => Err(KernelError::Unsupported(format!(
            "LAYERSTREAM_KERNEL_ARCH={text}: give an architecture from 75 up to this GPU's ({}{}), e.g. 75 for a T4's kernels",
            device.0, device.1
        ))),
    }
}
