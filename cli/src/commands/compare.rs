//! `layerstream compare OUT...`: one table over several analyses (the usual sweep over
//! models): model, parameters, outlier dimensions, mean layer and position fractions, max
//! |x|, classification, massive activations; written as compare.md and compare.json with a
//! combined plot (max |x| at the outlier-feature points over relative depth, per model).

use super::plots::line_panel;
use super::svg::{SERIES, Svg};
use crate::args::CompareArgs;
use anyhow::{Context, Result};
use layerstream_runtime::analysis::report::{ActivationReport, REPORT_SCHEMA_VERSION};
use layerstream_runtime::checkpoint::write_file;
use serde::Serialize;

/// One row of the table.
#[derive(Debug, Serialize)]
struct Row {
    out: String,
    model: String,
    parameters: u64,
    layers: usize,
    outlier_dims: Option<usize>,
    mean_layer_fraction: Option<f64>,
    mean_position_fraction: Option<f64>,
    max_abs: f64,
    classification: String,
    massive_activations: Option<u64>,
}

fn read_report(out: &std::path::Path) -> Result<ActivationReport> {
    let path = out.join("report.json");
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {}: is it the output folder of a finished `layerstream analyze`?",
            path.display()
        )
    })?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    if json["schema_version"] != REPORT_SCHEMA_VERSION {
        anyhow::bail!(
            "{} has report schema {}, this layerstream reads {REPORT_SCHEMA_VERSION}: run its analysis again with this version",
            path.display(),
            json["schema_version"]
        );
    }
    serde_json::from_value(json)
        .with_context(|| format!("{} is not a layerstream report", path.display()))
}

/// Runs `compare`.
pub fn compare(args: &CompareArgs) -> Result<()> {
    let reports: Vec<ActivationReport> = args
        .outs
        .iter()
        .map(|o| read_report(o))
        .collect::<Result<_>>()?;
    let rows: Vec<Row> = args
        .outs
        .iter()
        .zip(&reports)
        .map(|(out, r)| {
            let primary = r.outlier_features.first().map(|g| &g.readings[0]);
            Row {
                out: out.display().to_string(),
                model: r.model.name.clone(),
                parameters: r.model.parameters,
                layers: r.layers.len(),
                outlier_dims: primary.map(|p| p.dims.len()),
                mean_layer_fraction: primary.map(|p| p.mean_layer_fraction.estimate),
                mean_position_fraction: primary.map(|p| p.mean_position_fraction.estimate),
                max_abs: r
                    .layers
                    .iter()
                    .flat_map(|l| l.points.values().map(|p| p.distribution.max_abs))
                    .fold(0.0, f64::max),
                classification: r
                    .outlier_features
                    .first()
                    .map_or("not captured".to_string(), |g| {
                        g.classification.kind.clone()
                    }),
                massive_activations: r
                    .massive_activations
                    .looked_for
                    .then_some(r.massive_activations.total),
            }
        })
        .collect();
    let mut md = String::from(
        "| model | parameters | layers | outlier dims | mean layer % | mean position % | max abs | classification | massive activations |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    for row in &rows {
        md.push_str(&format!(
            "| {} | {:.3} B | {} | {} | {} | {} | {:.2} | {} | {} |\n",
            row.model,
            row.parameters as f64 / 1e9,
            row.layers,
            or_dash(row.outlier_dims.map(|v| v.to_string())),
            or_dash(row.mean_layer_fraction.map(|v| format!("{:.1}", v * 100.0))),
            or_dash(
                row.mean_position_fraction
                    .map(|v| format!("{:.1}", v * 100.0))
            ),
            row.max_abs,
            row.classification,
            or_dash(row.massive_activations.map(|v| v.to_string())),
        ));
    }
    print!("{md}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    write_file(&args.out, "compare.md", md.as_bytes())?;
    write_file(
        &args.out,
        "compare.json",
        &serde_json::to_vec_pretty(&rows)?,
    )?;
    combined_plot(&reports).save(&args.out, "compare")?;
    println!(
        "\nwritten: {0}/compare.md, {0}/compare.json, {0}/compare.svg and .png",
        args.out.display()
    );
    Ok(())
}

/// Max |x| over ln1/ln2 (else any point) per layer, over relative depth, one line per model.
fn combined_plot(reports: &[ActivationReport]) -> Svg {
    let mut svg = Svg::titled(
        760.0,
        340.0 + 18.0 * reports.len() as f64,
        "max |x| at ln1/ln2 per layer, by relative depth (layer / layers)",
    );
    let xs: Vec<f64> = (0..=20).map(|i| i as f64 / 20.0).collect();
    // Each model on the common depth grid (nearest analysed layer).
    let series: Vec<Vec<f64>> = reports
        .iter()
        .map(|r| {
            let per_layer: Vec<(f64, f64)> = r
                .layers
                .iter()
                .map(|l| {
                    let ln = ["ln1", "ln2"]
                        .iter()
                        .filter_map(|n| l.points.get(*n))
                        .map(|p| p.distribution.max_abs);
                    let any = l.points.values().map(|p| p.distribution.max_abs);
                    let value = ln.clone().fold(f64::NAN, f64::max);
                    let value = if value.is_nan() {
                        any.fold(0.0, f64::max)
                    } else {
                        value
                    };
                    (
                        l.layer as f64 / (r.model.num_layers.max(2) - 1) as f64,
                        value,
                    )
                })
                .collect();
            xs.iter()
                .map(|&x| {
                    per_layer
                        .iter()
                        .min_by(|a, b| (a.0 - x).abs().total_cmp(&(b.0 - x).abs()))
                        .map_or(f64::NAN, |p| p.1)
                })
                .collect()
        })
        .collect();
    let axes = ("relative depth (layer / (layers - 1))", "max |x| (log)");
    line_panel(&mut svg, 40.0, axes, &xs, &series, true);
    for (i, r) in reports.iter().enumerate() {
        let y = 320.0 + 18.0 * i as f64;
        svg.rect(90.0, y - 4.0, 12.0, 4.0, SERIES[i % SERIES.len()]);
        svg.text(108.0, y, 11.0, "start", false, &super::plots::short_name(r));
    }
    svg
}
