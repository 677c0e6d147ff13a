//! report.md's massive-activation section: both readings side by side per layer, the
//! layer's magnitudes (top three and median, as Sun et al.'s layer-wise figure), the
//! largest ones with their tokens, and the experts behind them in MoE layers; and the
//! attention-sink section that connects them to attention.

use layerstream_runtime::analysis::report::ActivationReport;
use std::fmt::Write as _;

/// Massive activations and the experts behind them.
pub fn massive_section(md: &mut String, report: &ActivationReport) {
    if !report.massive_activations.looked_for {
        return;
    }
    let m = &report.massive_activations;
    let _ = writeln!(md, "\n## Massive activations (resid_post)\n");
    let _ = writeln!(
        md,
        "{} in {} layer(s) by the sequence's median (per-token reading: {} in {} layer(s)); dimensions (layers): {}.\n",
        m.total,
        m.layers_with.len(),
        m.per_token_median_total,
        m.per_token_median_layers_with.len(),
        if m.dims.is_empty() {
            "-".to_string()
        } else {
            m.dims
                .iter()
                .map(|(d, n)| format!("{d} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        md,
        "| layer | found | tokens | per-token reading: found (tokens) | at position 0 | at first delimiter | elsewhere | top-1 | top-2 | top-3 | median | largest (dim, position, token, value, sequence median) |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for layer in &report.layers {
        let Some(ma) = &layer.massive else { continue };
        let top = ma.top.first().map_or("-".to_string(), |e| {
            format!(
                "{}, {}, {:?}, {:.1}, {:.4}",
                e.value.dim, e.value.position, e.token, e.value.value, e.value.sequence_median
            )
        });
        let g = &ma.magnitudes;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.4} | {} |",
            layer.layer,
            ma.total,
            ma.tokens,
            ma.per_token_median.total,
            ma.per_token_median.tokens,
            ma.at_first,
            ma.at_first_delimiter,
            ma.elsewhere,
            g.top1,
            g.top2,
            g.top3,
            g.median,
            top
        );
    }
    let _ = writeln!(
        md,
        "\nTop-1, top-2, top-3 and median: |x| over each sequence's hidden state at the layer, the mean over sequences (Sun et al., figure of the layer-wise magnitudes; plot `massive_magnitudes`)."
    );
    if m.total > 0 {
        expert_attribution(md, report);
    }
}

/// The experts behind each MoE layer's massive activations, when any were attributed.
fn expert_attribution(md: &mut String, report: &ActivationReport) {
    let layers: Vec<_> = report
        .layers
        .iter()
        .filter_map(|l| l.massive.as_ref().map(|m| (l.layer, m)))
        .filter(|(_, m)| m.attributed > 0)
        .collect();
    if layers.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nExperts behind them (MoE layers; the {} largest per layer, recomputed on the host in f32): a routed expert dominates a value when its contribution has the value's sign and exceeds the residual's and the shared expert's.\n",
        layerstream_runtime::analysis::massive::MASSIVE_ATTRIBUTED
    );
    let _ = writeln!(
        md,
        "| layer | attributed | dominant experts (values) | largest: contributions (expert: weight x output), shared, residual |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- |");
    for (layer, m) in layers {
        let dominant = match m.dominant_experts.is_empty() {
            true => "none".to_string(),
            false => m
                .dominant_experts
                .iter()
                .map(|(e, n)| format!("{e} ({n})"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let largest = m
            .top
            .iter()
            .find_map(|e| e.value.attribution.as_ref().map(|a| (e, a)))
            .map_or(String::new(), |(e, a)| {
                let experts: Vec<String> = a
                    .experts
                    .iter()
                    .map(|c| format!("{}: {:.1}", c.expert, c.contribution))
                    .collect();
                let shared = a
                    .shared_expert
                    .map_or(String::new(), |s| format!(", shared {s:.1}"));
                format!(
                    "dim {} = {:.1}: {}{}, residual {:.1}",
                    e.value.dim,
                    e.value.value,
                    experts.join(", "),
                    shared,
                    a.residual
                )
            });
        let _ = writeln!(
            md,
            "| {layer} | {} | {dominant} | {largest} |",
            m.attributed
        );
    }
}

/// Attention sinks: one line per layer.
pub fn sinks_section(md: &mut String, report: &ActivationReport) {
    if report.layers.iter().all(|l| l.attention_sinks.is_none()) {
        return;
    }
    let _ = writeln!(md, "\n## Attention sinks\n");
    let _ = writeln!(
        md,
        "Mean attention probability of all queries (every sequence and position) on the first token, on the sequence's first delimiter, and on everything else, over the query heads; heads above 0.5 on the first token; the head that puts the most there (plot `attention_sinks`).\n"
    );
    let _ = writeln!(
        md,
        "| layer | heads | on first token | on first delimiter | elsewhere | heads > 0.5 on first token | strongest head (mass) |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- |");
    for layer in &report.layers {
        let Some(a) = &layer.attention_sinks else {
            continue;
        };
        let strongest = (0..a.first.len()).max_by(|&x, &y| a.first[x].total_cmp(&a.first[y]));
        let strongest = strongest.map_or("-".into(), |h| format!("{h} ({:.3})", a.first[h]));
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.0}% | {} |",
            layer.layer,
            a.first.len(),
            a.mean_first,
            a.mean_first_delimiter,
            a.mean_other,
            a.sink_head_share * 100.0,
            strongest
        );
    }
}
