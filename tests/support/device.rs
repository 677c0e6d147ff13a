//! Moving test values to and from the GPU.

use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

/// A device copy of `values`.
pub fn upload<T: DeviceRepr>(gpu: &Gpu, values: &[T]) -> CudaSlice<T> {
    gpu.stream.clone_htod(values).unwrap()
}

/// A host copy of `buffer`.
pub fn download<T: DeviceRepr + Default + Clone>(gpu: &Gpu, buffer: &CudaSlice<T>) -> Vec<T> {
    gpu.stream.clone_dtoh(buffer).unwrap()
}

/// `n` zeros on the device.
pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, n: usize) -> CudaSlice<T> {
    gpu.stream.alloc_zeros(n).unwrap()
}
