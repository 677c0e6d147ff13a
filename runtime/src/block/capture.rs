//! Which capture points a micro-batch hands out and how: the request's choice of layers and
//! points, and its mode (whole activations, or statistics plus the points to save).

use super::{BlockOps, Buf};
use crate::capture::CapturePoint;
use crate::error::Result;
use crate::executor::{CaptureMode, RunRequest};

/// The request's capture choices for one layer.
#[derive(Clone, Copy)]
pub(crate) struct CapturePolicy<'a> {
    /// The request.
    pub request: &'a RunRequest,
    /// The layer.
    pub layer: usize,
}

impl CapturePolicy<'_> {
    /// Whether `point` of the layer is captured.
    pub fn captures(&self, point: CapturePoint) -> bool {
        self.request.captures(self.layer, point)
    }

    /// Hands `values (rows, width)` at `point` over or into the statistics, as asked.
    pub fn activation<O: BlockOps>(
        &self,
        ops: &mut O,
        point: CapturePoint,
        values: Buf,
        width: usize,
    ) -> Result<()> {
        if !self.captures(point) {
            return Ok(());
        }
        match self.request.capture_mode {
            CaptureMode::Activations => ops.hand_over(point, values, width),
            CaptureMode::Statistics { threshold, save } => {
                ops.accumulate(point, values, width, threshold)?;
                if save.contains(point) {
                    ops.hand_over(point, values, width)?;
                }
                Ok(())
            }
        }
    }

    /// Hands the router's decisions over, when the router is captured.
    pub fn routing<O: BlockOps>(&self, ops: &mut O) -> Result<()> {
        match self.captures(CapturePoint::Router) {
            true => ops.hand_over_routing(),
            false => Ok(()),
        }
    }
}
