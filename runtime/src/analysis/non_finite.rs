//! NaN and infinite activations: where they are. The statistics leave them out (every sum,
//! maximum, count and histogram is over the finite values; `non_finite` counts the rest), so
//! the report says where they appeared instead of showing numbers that look healthy.

use super::report::LayerAnalysis;
use crate::capture::CapturePoint;
use serde::{Deserialize, Serialize};

/// A capture point of a layer that saw NaN or infinite values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NonFinitePlace {
    /// Layer index.
    pub layer: usize,
    /// Capture point name.
    pub point: String,
    /// NaN or infinite values there.
    pub count: u64,
    /// Values seen there.
    pub numel: u64,
}

/// NaN and infinite values over the analysed layers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NonFiniteOverview {
    /// All of them.
    pub total: u64,
    /// Every (layer, point) with any, in forward order: the first is where they appear first.
    pub places: Vec<NonFinitePlace>,
}

impl NonFiniteOverview {
    /// Where `layers` (in forward order) saw NaN or infinite values.
    pub fn of(layers: &[LayerAnalysis]) -> Self {
        let mut overview = NonFiniteOverview::default();
        for layer in layers {
            for point in CapturePoint::ACTIVATIONS {
                let Some(analysis) = layer.points.get(point.name()) else {
                    continue;
                };
                let count = analysis.summary.non_finite;
                if count > 0 {
                    overview.total += count;
                    overview.places.push(NonFinitePlace {
                        layer: layer.layer,
                        point: point.name().to_string(),
                        count,
                        numel: analysis.summary.numel,
                    });
                }
            }
        }
        overview
    }

    /// One warning line, or none when every value was finite.
    pub fn warning(&self) -> Option<String> {
        let first = self.places.first()?;
        Some(format!(
            "warning: {} NaN or infinite activation value(s) at {} (layer, point) place(s), first at layer {} {} ({} of {} values); every statistic leaves them out (report.json: non_finite). The model's weights or config.json (RoPE base, epsilon) are the usual cause",
            self.total,
            self.places.len(),
            first.layer,
            first.point,
            first.count,
            first.numel
        ))
    }
}
