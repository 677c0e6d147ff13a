//! Running a request: validation, then the chosen backend's layer-major loop.

use crate::backend::Backend;
use crate::error::Result;
use crate::executor::{RunObserver, RunRequest, RunSummary};
use crate::model::Model;

/// Runs `request` on `model` layer by layer on `backend`, reporting to `observer`.
pub fn run(
    model: &Model,
    request: &RunRequest,
    backend: &Backend,
    observer: &mut dyn RunObserver,
) -> Result<RunSummary> {
    request.validate(model)?;
    match backend {
        Backend::Cpu(cpu) => {
            crate::cpu::executor::run(model, request, cpu, observer).map(|()| RunSummary::default())
        }
        Backend::Cuda(cuda) => crate::cuda::executor::run(model, request, cuda, observer),
    }
}
