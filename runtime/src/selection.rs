//! Which layers and capture points to analyse, as users write them: `all`, `0,6,11`, `0-11`,
//! or a mix such as `0-3,8`.

use crate::capture::CapturePoint;
use crate::error::{Result, RuntimeError};
use std::collections::BTreeSet;

/// Resolves a `--layers` value against a model with `num_layers` layers.
pub fn parse_layers(text: &str, num_layers: usize) -> Result<BTreeSet<usize>> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("all") {
        return Ok((0..num_layers).collect());
    }
    let bad = |part: &str| {
        RuntimeError::InvalidRequest(format!(
            "--layers {text:?}: cannot read {part:?}; write all, a list such as 0,6,11 or a range such as 0-11"
        ))
    };
    let index = |part: &str| -> Result<usize> {
        let layer: usize = part.trim().parse().map_err(|_| bad(part))?;
        if layer >= num_layers {
            return Err(RuntimeError::InvalidRequest(format!(
                "--layers: layer {layer} is out of range; the model has {num_layers} layers (0-{})",
                num_layers - 1
            )));
        }
        Ok(layer)
    };
    let mut layers = BTreeSet::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (index(first)?, index(last)?);
                if first > last {
                    return Err(bad(part));
                }
                layers.extend(first..=last);
            }
            None => {
                layers.insert(index(part)?);
            }
        }
    }
    Ok(layers)
}

/// Resolves a `--points` value: `all` or a comma-separated list of point names.
pub fn parse_points(text: &str) -> Result<Vec<CapturePoint>> {
    if text.trim().eq_ignore_ascii_case("all") {
        return Ok(CapturePoint::DEFAULT.to_vec());
    }
    let mut points = Vec::new();
    for part in text.split(',') {
        let point: CapturePoint = part.parse().map_err(RuntimeError::InvalidRequest)?;
        if !points.contains(&point) {
            points.push(point);
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_lists_and_ranges() {
        assert_eq!(parse_layers("all", 3).unwrap(), BTreeSet::from([0, 1, 2]));
        assert_eq!(
            parse_layers("0,6,11", 12).unwrap(),
            BTreeSet::from([0, 6, 11])
        );
        assert_eq!(
            parse_layers("0-3,8", 12).unwrap(),
            BTreeSet::from([0, 1, 2, 3, 8])
        );
    }

    #[test]
    fn out_of_range_layer_is_named() {
        let err = parse_layers("0,12", 12).unwrap_err().to_string();
        assert!(
            err.contains("layer 12") && err.contains("12 layers"),
            "{err}"
        );
        assert!(parse_layers("3-1", 12).is_err());
        assert!(parse_layers("x", 12).is_err());
    }

    #[test]
    fn points_by_name() {
        assert_eq!(
            parse_points("ln1,resid_post").unwrap(),
            vec![CapturePoint::Ln1, CapturePoint::ResidPost]
        );
        assert!(
            parse_points("ln3")
                .unwrap_err()
                .to_string()
                .contains("attn_in_o")
        );
    }
}
