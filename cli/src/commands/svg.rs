//! A small SVG writer for the report's plots (rectangles, lines, text, a colour scale) and
//! the PNG copy of each plot, rendered by resvg with the embedded DejaVu Sans.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// The embedded font (DejaVu Sans; licence in cli/assets/NOTICE.md).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// An SVG document being drawn.
pub struct Svg {
    width: f64,
    height: f64,
    body: String,
}

/// A colour from a 0..1 value: dark blue through teal and green to yellow (viridis-like).
pub fn scale_colour(t: f64) -> String {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let position = t * (STOPS.len() - 1) as f64;
    let i = (position.floor() as usize).min(STOPS.len() - 2);
    let f = position - i as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

/// Line colours for series.
pub const SERIES: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Svg {
    /// An empty white picture.
    pub fn new(width: f64, height: f64) -> Self {
        let mut svg = Svg {
            width,
            height,
            body: String::new(),
        };
        svg.rect(0.0, 0.0, width, height, "#ffffff");
        svg
    }

    /// An empty picture with `title` centred on top (the plots' common heading).
    pub fn titled(width: f64, height: f64, title: &str) -> Self {
        let mut svg = Svg::new(width, height);
        svg.text(width / 2.0, 22.0, 14.0, "middle", false, title);
        svg
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}" fill="{fill}"/>"#
        );
    }

    /// A line.
    pub fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.2}" y1="{y1:.2}" x2="{x2:.2}" y2="{y2:.2}" stroke="{stroke}" stroke-width="1"/>"#
        );
    }

    /// A polyline through `points` with small markers.
    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str) {
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.2},{y:.2}"))
            .collect();
        let _ = writeln!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="1.5"/>"#,
            path.join(" ")
        );
        for (x, y) in points {
            let _ = writeln!(
                self.body,
                r#"<circle cx="{x:.2}" cy="{y:.2}" r="2" fill="{stroke}"/>"#
            );
        }
    }

    /// Text; `anchor` is start, middle or end; `rotate` turns it by -90 degrees.
    pub fn text(&mut self, x: f64, y: f64, size: f64, anchor: &str, rotate: bool, text: &str) {
        let transform = if rotate {
            format!(r#" transform="rotate(-90 {x:.2} {y:.2})""#)
        } else {
            String::new()
        };
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.2}" y="{y:.2}" font-family="DejaVu Sans" font-size="{size}" text-anchor="{anchor}"{transform}>{}</text>"#,
            escape(text)
        );
    }

    /// The document.
    pub fn finish(&self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }

    /// Writes `dir/name.svg` and `dir/name.png`.
    pub fn save(&self, dir: &Path, name: &str) -> Result<Vec<String>> {
        let svg = self.finish();
        let png_name = format!("{name}.png");
        let png = render_png(&svg)
            .with_context(|| format!("cannot render {}", dir.join(&png_name).display()))?;
        // Atomic, as every other file of an output folder: a full disk leaves the old plot
        // or none, never a truncated one.
        let svg_name = format!("{name}.svg");
        layerstream_runtime::checkpoint::write_file(dir, &svg_name, svg.as_bytes())?;
        layerstream_runtime::checkpoint::write_file(dir, &png_name, &png)?;
        Ok(vec![svg_name, png_name])
    }
}

/// Renders an SVG document to PNG bytes at twice its size.
pub fn render_png(svg: &str) -> Result<Vec<u8>> {
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_font_data(FONT.to_vec());
    let tree = resvg::usvg::Tree::from_str(svg, &options)?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(2.0)
        .context("plot size")?;
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("plot size")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(2.0, 2.0),
        &mut pixmap.as_mut(),
    );
    Ok(pixmap.encode_png()?)
}

/// Axis ticks: about `n` round values covering `low..=high`.
pub fn ticks(low: f64, high: f64, n: usize) -> Vec<f64> {
    if high.partial_cmp(&low) != Some(std::cmp::Ordering::Greater) {
        return vec![low];
    }
    let raw = (high - low) / n.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(raw);
    let first = (low / step).ceil() * step;
    (0..)
        .map(|i| first + i as f64 * step)
        .take_while(|&v| v <= high + step * 1e-9)
        .collect()
}

/// A number for a tick label.
pub fn label(value: f64) -> String {
    if value.abs() >= 1e4 || (value != 0.0 && value.abs() < 1e-2) {
        format!("{value:.0e}")
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}
