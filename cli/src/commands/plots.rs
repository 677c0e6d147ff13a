//! The report's plots, each as SVG and PNG under `OUT/plots/`: the layer x dimension heatmap
//! of outlier magnitude, per-layer max |x| and RMS kurtosis per capture point, the expert
//! load per layer (MoE), the residual stream's top-1/2/3 and median |x| per layer (Sun et
//! al.'s layer-wise figure), and the layer x head heatmap of attention on the first token.

use super::svg::{SERIES, Svg, label, scale_colour, ticks};
use anyhow::{Context, Result};
use layerstream_runtime::CapturePoint;
use layerstream_runtime::analysis::outlier_report::OutlierGroupReport;
use layerstream_runtime::analysis::report::ActivationReport;
use std::path::Path;

/// Writes every plot the report has data for (SVG and PNG); returns their file names.
pub fn write_plots(report: &ActivationReport, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for group in &report.outlier_features {
        let mut name = format!("outlier_heatmap_{}", group.points.join("_"));
        if let Some(mixer) = &group.mixer {
            name = format!("{name}_{mixer}");
        }
        written.extend(outlier_heatmap(group, &short_name(report)).save(dir, &name)?);
    }
    if !report.layers.is_empty() {
        written.extend(per_layer_lines(report).save(dir, "max_abs_and_kurtosis")?);
    }
    if report.layers.iter().any(|l| l.router.is_some()) {
        written.extend(expert_load(report).save(dir, "expert_load")?);
    }
    if report.layers.iter().any(|l| l.massive.is_some()) {
        written.extend(massive_magnitudes(report).save(dir, "massive_magnitudes")?);
    }
    if report.layers.iter().any(|l| l.attention_sinks.is_some()) {
        written.extend(attention_sinks(report).save(dir, "attention_sinks")?);
    }
    Ok(written)
}

/// The model as plot titles name it: its folder's last component and type.
pub fn short_name(report: &ActivationReport) -> String {
    let name = &report.model.name;
    let last = name.rsplit('/').find(|s| !s.is_empty()).unwrap_or(name);
    // A long name is cut at a word boundary (or before a parenthesis) with an ellipsis.
    let last = match last.char_indices().nth(32) {
        None => last.to_string(),
        Some((cut, _)) => {
            let head = &last[..cut];
            let end = head
                .find('(')
                .or_else(|| head.rfind(' '))
                .filter(|&i| i > 0)
                .unwrap_or(cut);
            format!("{}...", head[..end].trim_end())
        }
    };
    format!(
        "{last} ({}, {} layers)",
        report.model.model_type, report.model.num_layers
    )
}

/// A heatmap of `values (rows, columns)` on a log colour scale, with labels.
#[allow(clippy::too_many_arguments)]
fn heatmap(
    title: &str,
    row_labels: &[String],
    column_labels: &[String],
    values: &[Vec<f64>],
    row_axis: &str,
    column_axis: &str,
    scale_name: &str,
    log: bool,
) -> Svg {
    let (rows, columns) = (row_labels.len(), column_labels.len().max(1));
    let cell_w = (640.0 / columns as f64).clamp(4.0, 24.0);
    let cell_h = (420.0 / rows.max(1) as f64).clamp(4.0, 24.0);
    let (left, top) = (70.0, 50.0);
    let width = left + cell_w * columns as f64 + 120.0;
    let height = top + cell_h * rows as f64 + 70.0;
    let mut svg = Svg::new(width, height);
    svg.text(width / 2.0, 25.0, 14.0, "middle", false, title);
    let transform = |v: f64| if log { v.max(1e-6).log10() } else { v };
    let finite: Vec<f64> = values
        .iter()
        .flatten()
        .map(|&v| transform(v))
        .filter(|v| v.is_finite())
        .collect();
    let low = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let high = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if high > low { high - low } else { 1.0 };
    for (r, row) in values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let colour = scale_colour((transform(v) - low) / span);
            svg.rect(
                left + c as f64 * cell_w,
                top + r as f64 * cell_h,
                cell_w,
                cell_h,
                &colour,
            );
        }
    }
    let label_every = |n: usize, cell: f64| ((12.0 / cell).ceil() as usize).max(1).min(n.max(1));
    let step = label_every(rows, cell_h);
    for (r, text) in row_labels.iter().enumerate().step_by(step) {
        svg.text(
            left - 4.0,
            top + (r as f64 + 0.75) * cell_h,
            10.0,
            "end",
            false,
            text,
        );
    }
    let step = label_every(columns, cell_w);
    for (c, text) in column_labels.iter().enumerate().step_by(step) {
        let x = left + (c as f64 + 0.5) * cell_w;
        svg.text(x, top + rows as f64 * cell_h + 6.0, 9.0, "end", true, text);
    }
    svg.text(
        18.0,
        top + rows as f64 * cell_h / 2.0,
        12.0,
        "middle",
        true,
        row_axis,
    );
    svg.text(
        left + columns as f64 * cell_w / 2.0,
        height - 8.0,
        12.0,
        "middle",
        false,
        column_axis,
    );
    // Colour bar.
    let bar_x = left + columns as f64 * cell_w + 30.0;
    let bar_h = (rows as f64 * cell_h).max(60.0);
    for i in 0..50 {
        let t = 1.0 - i as f64 / 49.0;
        svg.rect(
            bar_x,
            top + i as f64 * bar_h / 50.0,
            14.0,
            bar_h / 50.0 + 0.5,
            &scale_colour(t),
        );
    }
    let shown = |v: f64| if log { label(10f64.powf(v)) } else { label(v) };
    if finite.is_empty() {
        return svg;
    }
    svg.text(bar_x + 18.0, top + 8.0, 10.0, "start", false, &shown(high));
    svg.text(bar_x + 18.0, top + bar_h, 10.0, "start", false, &shown(low));
    svg.text(bar_x + 7.0, top - 8.0, 10.0, "middle", false, scale_name);
    svg
}

/// Layer x dimension heatmap of the largest |x| (outlier dimensions and the largest others).
fn outlier_heatmap(group: &OutlierGroupReport, model: &str) -> Svg {
    let outliers: Vec<usize> = group.readings[0].dims.iter().map(|d| d.dim).collect();
    let columns: Vec<String> = group
        .heatmap
        .dims
        .iter()
        .map(|d| {
            if outliers.contains(d) {
                format!("{d}*")
            } else {
                d.to_string()
            }
        })
        .collect();
    let rows: Vec<String> = match group.layer_indices.is_empty() {
        true => (0..group.heatmap.max_abs.len())
            .map(|l| l.to_string())
            .collect(),
        false => group.layer_indices.iter().map(|l| l.to_string()).collect(),
    };
    let values: Vec<Vec<f64>> = group
        .heatmap
        .max_abs
        .iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    heatmap(
        &format!(
            "{model}: max |x| at {}{} (* outlier feature)",
            group.points.join(" + "),
            group
                .mixer
                .as_ref()
                .map_or(String::new(), |m| format!(" ({m})"))
        ),
        &rows,
        &columns,
        &values,
        "analysed layer",
        "hidden dimension",
        "max |x|",
        true,
    )
}

/// Two panels over the layers: max |x| (log scale) and RMS kurtosis, one line per point.
fn per_layer_lines(report: &ActivationReport) -> Svg {
    let names: Vec<&str> = CapturePoint::ACTIVATIONS
        .iter()
        .map(|p| p.name())
        .filter(|n| report.layers[0].points.contains_key(*n))
        .collect();
    let layers: Vec<f64> = report.layers.iter().map(|l| l.layer as f64).collect();
    let series =
        |f: &dyn Fn(&layerstream_runtime::analysis::layer_analysis::PointAnalysis) -> f64| {
            names
                .iter()
                .map(|n| {
                    report
                        .layers
                        .iter()
                        .map(|l| l.points.get(*n).map_or(f64::NAN, f))
                        .collect::<Vec<f64>>()
                })
                .collect::<Vec<_>>()
        };
    let max_abs = series(&|p| p.distribution.max_abs);
    let kurtosis = series(&|p| p.distribution.rms_kurtosis);
    let title = format!("{}: per-layer max |x| and RMS kurtosis", short_name(report));
    let mut svg = Svg::titled(760.0, 620.0, &title);
    line_panel(
        &mut svg,
        40.0,
        ("layer", "max |x| (log)"),
        &layers,
        &max_abs,
        true,
    );
    line_panel(
        &mut svg,
        330.0,
        ("layer", "kurtosis of per-dim RMS"),
        &layers,
        &kurtosis,
        false,
    );
    for (i, n) in names.iter().enumerate() {
        let x = 90.0 + i as f64 * 105.0;
        svg.rect(x, 598.0, 12.0, 4.0, SERIES[i % SERIES.len()]);
        svg.text(x + 16.0, 604.0, 11.0, "start", false, n);
    }
    svg
}

/// A line panel at height `top` (240 tall) of `series` over `xs`.
pub fn line_panel(
    svg: &mut Svg,
    top: f64,
    (x_name, y_name): (&str, &str),
    xs: &[f64],
    series: &[Vec<f64>],
    log: bool,
) {
    let (left, width, height) = (80.0, 640.0, 230.0);
    let transform = |v: f64| if log { v.max(1e-12).log10() } else { v };
    let values: Vec<f64> = series
        .iter()
        .flatten()
        .map(|&v| transform(v))
        .filter(|v| v.is_finite())
        .collect();
    let (mut low, mut high) = (
        values.iter().copied().fold(f64::INFINITY, f64::min),
        values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    if high.partial_cmp(&low) != Some(std::cmp::Ordering::Greater) {
        low -= 0.5;
        high += 0.5;
    }
    let (x_low, x_high) = (
        xs.first().copied().unwrap_or(0.0),
        xs.last()
            .copied()
            .unwrap_or(1.0)
            .max(xs.first().copied().unwrap_or(0.0) + 1.0),
    );
    let px = |x: f64| left + (x - x_low) / (x_high - x_low) * width;
    let py = |y: f64| top + height - (y - low) / (high - low) * height;
    svg.line(left, top + height, left + width, top + height, "#000000");
    svg.line(left, top, left, top + height, "#000000");
    for t in ticks(low, high, 5) {
        svg.line(left - 4.0, py(t), left, py(t), "#000000");
        let text = if log { label(10f64.powf(t)) } else { label(t) };
        svg.text(left - 6.0, py(t) + 3.0, 10.0, "end", false, &text);
    }
    let integer_x = xs.iter().all(|x| x.fract() == 0.0);
    for t in ticks(x_low, x_high, 10) {
        if integer_x && t.fract() != 0.0 {
            continue;
        }
        svg.line(px(t), top + height, px(t), top + height + 4.0, "#000000");
        svg.text(px(t), top + height + 15.0, 10.0, "middle", false, &label(t));
    }
    svg.text(20.0, top + height / 2.0, 12.0, "middle", true, y_name);
    svg.text(
        left + width / 2.0,
        top + height + 30.0,
        11.0,
        "middle",
        false,
        x_name,
    );
    for (i, ys) in series.iter().enumerate() {
        let points: Vec<(f64, f64)> = xs
            .iter()
            .zip(ys)
            .filter(|(_, y)| transform(**y).is_finite())
            .map(|(&x, &y)| (px(x), py(transform(y))))
            .collect();
        svg.polyline(&points, SERIES[i % SERIES.len()]);
    }
}

/// Layer x expert heatmap of the load f_e.
fn expert_load(report: &ActivationReport) -> Svg {
    let routed: Vec<_> = report
        .layers
        .iter()
        .filter_map(|l| l.router.as_ref().map(|r| (l.layer, r)))
        .collect();
    let experts = routed.iter().map(|(_, r)| r.num_experts).max().unwrap_or(0);
    let rows: Vec<String> = routed.iter().map(|(l, _)| l.to_string()).collect();
    let columns: Vec<String> = (0..experts).map(|e| e.to_string()).collect();
    let values: Vec<Vec<f64>> = routed.iter().map(|(_, r)| r.load.clone()).collect();
    heatmap(
        &format!(
            "{}: expert load f_e per MoE layer (uniform = {:.4})",
            report.model.name,
            1.0 / experts.max(1) as f64
        ),
        &rows,
        &columns,
        &values,
        "layer",
        "expert",
        "f_e",
        false,
    )
}

/// Top-1, top-2, top-3 and median |x| of `resid_post` per layer (each the mean over
/// sequences), on a log axis: Sun et al.'s layer-wise figure.
fn massive_magnitudes(report: &ActivationReport) -> Svg {
    let layers: Vec<_> = report
        .layers
        .iter()
        .filter_map(|l| l.massive.as_ref().map(|m| (l.layer as f64, m.magnitudes)))
        .collect();
    let xs: Vec<f64> = layers.iter().map(|(l, _)| *l).collect();
    let pick = |f: fn(&layerstream_runtime::analysis::magnitudes::LayerMagnitudes) -> f64| {
        layers.iter().map(|(_, m)| f(m)).collect::<Vec<f64>>()
    };
    let series = [
        pick(|m| m.top1),
        pick(|m| m.top2),
        pick(|m| m.top3),
        pick(|m| m.median),
    ];
    let title = format!(
        "{}: resid_post magnitudes per layer (mean over sequences)",
        short_name(report)
    );
    let mut svg = Svg::titled(760.0, 340.0, &title);
    line_panel(&mut svg, 40.0, ("layer", "|x| (log)"), &xs, &series, true);
    for (i, name) in ["top 1", "top 2", "top 3", "median"].iter().enumerate() {
        let x = 150.0 + i as f64 * 120.0;
        svg.rect(x, 318.0, 12.0, 4.0, SERIES[i % SERIES.len()]);
        svg.text(x + 16.0, 324.0, 11.0, "start", false, name);
    }
    svg
}

/// Layer x query head heatmap of the mean attention probability on the first token.
fn attention_sinks(report: &ActivationReport) -> Svg {
    let layers: Vec<_> = report
        .layers
        .iter()
        .filter_map(|l| l.attention_sinks.as_ref().map(|a| (l.layer, a)))
        .collect();
    let heads = layers.iter().map(|(_, a)| a.first.len()).max().unwrap_or(0);
    let rows: Vec<String> = layers.iter().map(|(l, _)| l.to_string()).collect();
    let columns: Vec<String> = (0..heads).map(|h| h.to_string()).collect();
    let values: Vec<Vec<f64>> = layers.iter().map(|(_, a)| a.first.clone()).collect();
    heatmap(
        &format!(
            "{}: mean attention on the first token per head",
            short_name(report)
        ),
        &rows,
        &columns,
        &values,
        "layer",
        "query head",
        "attention on token 0",
        false,
    )
}
