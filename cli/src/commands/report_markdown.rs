//! `report.md`: the tables of report.json a person reads.

use layerstream_runtime::CapturePoint;
use layerstream_runtime::analysis::report::ActivationReport;
use layerstream_runtime::analysis::resample::Interval;
use std::fmt::Write as _;

pub(super) fn interval(i: &Interval, digits: usize) -> String {
    match (i.low, i.high) {
        (Some(low), Some(high)) => {
            format!("{:.digits$} [{low:.digits$}, {high:.digits$}]", i.estimate)
        }
        _ => format!("{:.digits$}", i.estimate),
    }
}

/// The markdown report.
pub fn report_markdown(report: &ActivationReport) -> String {
    let mut md = String::new();
    let s = &report.settings;
    let _ = writeln!(md, "# Activation report: {}\n", report.model.name);
    let _ = writeln!(
        md,
        "Model `{}` ({} layers, hidden {}, {:.3} B parameters); data {} ({} sequences x {} tokens). {}.\n",
        report.model.model_type,
        report.model.num_layers,
        report.model.hidden_size,
        report.model.parameters as f64 / 1e9,
        report.data.name,
        report.data.num_sequences,
        report.data.seq_len,
        report.tool
    );
    let _ = writeln!(
        md,
        "Intervals: {} ({} resamples, seed {}). Outlier features: |x| >= {} in >= {:.0}% of layers and >= {:.0}% of positions. Massive activations: |x| > {} and >= {}x the median |x| of the sequence's hidden state at the layer (all tokens and dimensions, Sun et al.); the per-token reading compares with the token's own hidden state instead.\n",
        s.interval,
        s.bootstrap_resamples,
        s.seed,
        s.threshold,
        s.min_layer_fraction * 100.0,
        s.min_position_fraction * 100.0,
        s.massive_min_magnitude,
        s.massive_median_ratio
    );
    non_finite_section(&mut md, report);
    outlier_sections(&mut md, report);
    per_layer_section(&mut md, report);
    super::report_massive::massive_section(&mut md, report);
    super::report_massive::sinks_section(&mut md, report);
    routing_section(&mut md, report);
    md
}

/// Outlier features, one section per group of points.
fn outlier_sections(md: &mut String, report: &ActivationReport) {
    for group in &report.outlier_features {
        let of = match &group.mixer {
            Some(mixer) => format!(" ({mixer} layers {:?})", group.layer_indices),
            None => String::new(),
        };
        let _ = writeln!(
            md,
            "## Outlier features at {}{of}\n",
            group.points.join(" + ")
        );
        let c = &group.classification;
        let _ = writeln!(
            md,
            "**{}**: {} outlier dimension(s) (primary reading); median layer agreement {:.2}, median sequence agreement {:.2}; per-layer sets (>= 6% of a layer's positions) overlap by mean Jaccard {}. Rule: {}.\n",
            c.kind,
            c.outlier_dims,
            c.median_layer_agreement,
            c.median_sequence_agreement,
            c.mean_layer_jaccard
                .map_or("-".to_string(), |j| format!("{j:.2}")),
            c.rule
        );
        let _ = writeln!(
            md,
            "| reading (layers, positions) | dimensions | count | mean layer fraction | mean position fraction |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
        for r in &group.readings {
            let dims: Vec<String> = r.dims.iter().map(|d| d.dim.to_string()).collect();
            let _ = writeln!(
                md,
                "| {:?}, {:?}{} | {} | {} | {} | {} |",
                r.layer_reading,
                r.position_reading,
                if r.primary { " (primary)" } else { "" },
                if dims.is_empty() {
                    "-".to_string()
                } else {
                    dims.join(", ")
                },
                interval(&r.count, 1),
                interval(&r.mean_layer_fraction, 3),
                interval(&r.mean_position_fraction, 3)
            );
        }
        let primary = &group.readings[0];
        if !primary.dims.is_empty() {
            let _ = writeln!(
                md,
                "\n| dim | layers | positions | max abs | mean abs (>= threshold) | sign consistency | layer agreement | sequence agreement | selection probability |"
            );
            let _ = writeln!(
                md,
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
            );
            for d in &primary.dims {
                let _ = writeln!(
                    md,
                    "| {} | {:.1}% | {:.1}% | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                    d.dim,
                    d.layer_fraction * 100.0,
                    d.position_fraction * 100.0,
                    d.max_abs,
                    d.mean_abs,
                    d.sign_consistency,
                    d.layer_agreement,
                    d.sequence_agreement,
                    d.selection_probability
                        .map_or("-".to_string(), |p| format!("{p:.3}"))
                );
            }
        }
        if let Some(cross) = &group.cross_batch {
            let sets: Vec<String> = cross
                .batches
                .iter()
                .map(|b| {
                    format!(
                        "sequences {}-{}: [{}]",
                        b.start,
                        b.end - 1,
                        b.dims
                            .iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
                .collect();
            let _ = writeln!(
                md,
                "\nCross-batch: {}; mean Jaccard {:.2}.",
                sets.join("; "),
                cross.mean_jaccard
            );
        }
        let _ = writeln!(md);
    }
}

/// Where NaN or infinite values appeared (nothing when every value was finite).
fn non_finite_section(md: &mut String, report: &ActivationReport) {
    let overview = &report.non_finite;
    let Some(first) = overview.places.first() else {
        return;
    };
    let _ = writeln!(md, "## NaN and infinite values\n");
    let _ = writeln!(
        md,
        "**{} value(s) were NaN or infinite**, first at layer {} {}. Every statistic in this report leaves them out; check the model's weights and config.json.\n",
        overview.total, first.layer, first.point
    );
    let _ = writeln!(md, "| layer | point | NaN/Inf | of values |");
    let _ = writeln!(md, "| --- | --- | --- | --- |");
    for place in &overview.places {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            place.layer, place.point, place.count, place.numel
        );
    }
    md.push('\n');
}

/// The per-layer table.
fn per_layer_section(md: &mut String, report: &ActivationReport) {
    let _ = writeln!(md, "## Per layer\n");
    let names: Vec<&str> = CapturePoint::ACTIVATIONS
        .iter()
        .map(|p| p.name())
        .filter(|n| {
            report
                .layers
                .first()
                .is_some_and(|l| l.points.contains_key(*n))
        })
        .collect();
    let _ = writeln!(
        md,
        "max |x| / RMS kurtosis [95% interval] / max over median, per capture point.\n"
    );
    // Hybrid models (Qwen3-Next) name each layer's mixer.
    let mixers = report.layers.iter().any(|l| l.mixer.is_some());
    let (mixer_head, mixer_rule) = if mixers {
        (" mixer |", " --- |")
    } else {
        ("", "")
    };
    let _ = writeln!(md, "| layer |{mixer_head} {} |", names.join(" | "));
    let _ = writeln!(md, "| --- |{mixer_rule}{}", " --- |".repeat(names.len()));
    for layer in &report.layers {
        let cells: Vec<String> = names
            .iter()
            .map(|n| {
                layer.points.get(*n).map_or("-".to_string(), |p| {
                    let bad = match p.summary.non_finite {
                        0 => String::new(),
                        n => format!(" / **{n} NaN/Inf**"),
                    };
                    format!(
                        "{:.2} / {} / {:.0}{bad}",
                        p.distribution.max_abs,
                        interval(&p.rms_kurtosis, 2),
                        p.distribution.max_over_median
                    )
                })
            })
            .collect();
        let mixer = match (mixers, &layer.mixer) {
            (false, _) => String::new(),
            (true, m) => format!(" {} |", m.as_deref().unwrap_or("-")),
        };
        let _ = writeln!(md, "| {} |{mixer} {} |", layer.layer, cells.join(" | "));
    }
}

/// Expert load and router entropy per MoE layer.
fn routing_section(md: &mut String, report: &ActivationReport) {
    if report.layers.iter().any(|l| l.router.is_some()) {
        let _ = writeln!(md, "\n## Routing\n");
        let _ = writeln!(
            md,
            "| layer | experts (top-k) | load entropy / ln E | MaxVio | router entropy (nats) | over ln E | busiest expert (f_e) |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- |");
        for layer in &report.layers {
            let Some(r) = &layer.router else { continue };
            let busiest = (0..r.load.len())
                .max_by(|&a, &b| r.load[a].total_cmp(&r.load[b]))
                .unwrap_or(0);
            let _ = writeln!(
                md,
                "| {} | {} ({}) | {} | {} | {} | {:.3} | {} ({:.4}) |",
                layer.layer,
                r.num_experts,
                r.top_k,
                interval(&r.load_entropy, 3),
                interval(&r.max_violation, 2),
                interval(&r.router_entropy, 3),
                r.normalized_router_entropy,
                busiest,
                r.load.get(busiest).copied().unwrap_or(0.0)
            );
        }
        selection_bias_section(md, report);
    }
}

/// What the sigmoid router's selection bias changed per layer (GLM-4.5).
fn selection_bias_section(md: &mut String, report: &ActivationReport) {
    let layers: Vec<_> = report
        .layers
        .iter()
        .filter_map(|l| Some((l.layer, l.router.as_ref()?.selection_bias.as_ref()?)))
        .collect();
    if layers.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nThe router chooses by its sigmoid scores plus a selection bias and weighs by the scores alone; without the bias it would choose:\n"
    );
    let _ = writeln!(
        md,
        "| layer | assignments the bias changed | tokens changed | load entropy / ln E without it | MaxVio without it |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    for (layer, b) in layers {
        let _ = writeln!(
            md,
            "| {layer} | {} | {} | {} | {} |",
            interval(&b.assignments_changed, 4),
            b.tokens_changed,
            interval(&b.unbiased_load_entropy, 3),
            interval(&b.unbiased_max_violation, 2)
        );
    }
}
