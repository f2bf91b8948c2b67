//! Figures drawn server-side with plotters: a [`Figure`] of side-by-side [`Panel`]s in, SVG
//! (for pages: every run's line labelled for tooltips and legend toggling) or PNG (for papers)
//! out. The pages, the sweep command and the benchmark all draw through here, so a run has the
//! same colour and dash pattern everywhere (see [`colour`]).
//!
//! PNG text needs a font and the machine may have none: DejaVu Sans is embedded in the binary
//! (assets/fonts, Bitstream Vera licence) and registered with plotters' `ab_glyph` renderer.
//! Both backends measure text with it to lay out the chart.

pub mod colour;
pub mod downsample;
mod draw;
mod svg;

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context};
use plotters::prelude::*;

pub use colour::{Dash, MarkShape};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub title: String,
    /// Pixels; the SVG scales with its container.
    pub size: (u32, u32),
    /// Side by side, sharing the colour bar.
    pub panels: Vec<Panel>,
    /// The α colour bar at the right (the log scale; categorical α colours go in the legend).
    pub colour_bar: bool,
    /// What the colours, dash patterns and markers mean, below the plots (with every panel's own
    /// legend entries): never on top of the data.
    pub legend: Vec<LegendEntry>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Panel {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    /// Drawn first, under the lines.
    pub bands: Vec<Band>,
    pub lines: Vec<Line>,
    pub markers: Vec<Marker>,
    pub legend: Vec<LegendEntry>,
    /// Shown instead of an empty plot.
    pub empty_note: String,
    /// A categorical y axis: value `i` is labelled with the `i`-th name (the forest plot).
    pub y_categories: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Axis {
    pub label: String,
    /// Logarithmic; points at or below zero are left out.
    pub log: bool,
}

impl Axis {
    pub fn new(label: impl Into<String>) -> Self {
        Self { label: label.into(), log: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A run's (or a group's) own line.
    Main,
    /// The unsmoothed data under a smoothed line, drawn faint.
    Raw,
    /// A fitted curve.
    Fit,
}

impl LineKind {
    fn class(self) -> &'static str {
        match self {
            Self::Main => "run-line",
            Self::Raw => "run-raw",
            Self::Fit => "fit-line",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The run or group it belongs to (`data-key`, for legend toggling).
    pub key: String,
    /// The tooltip of the whole line.
    pub label: String,
    pub kind: LineKind,
    pub colour: RGBColor,
    pub dash: Dash,
    /// Repeated along the line (the parameters other than α and τ that differ).
    pub marker: Option<MarkShape>,
    pub points: Vec<(f64, f64)>,
    /// Invisible hover targets with their tooltips (SVG only).
    pub hover: Vec<Hover>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hover {
    pub x: f64,
    pub y: f64,
    pub text: String,
}

/// A filled area between `lower` and `upper` (a confidence band).
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub key: String,
    pub colour: RGBColor,
    /// (x, lower, upper), in x order.
    pub points: Vec<(f64, f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Circle,
    /// A hollow circle: a point shown for reference (an evaluation whose weights were not kept).
    Ring,
    Triangle,
    Cross,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub key: String,
    pub x: f64,
    pub y: f64,
    pub colour: RGBColor,
    pub shape: Shape,
    /// The tooltip.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LegendEntry {
    pub label: String,
    pub colour: RGBColor,
    pub dash: Dash,
    pub marker: Option<MarkShape>,
}

impl LegendEntry {
    pub fn line(label: impl Into<String>, colour: RGBColor, dash: Dash) -> Self {
        Self { label: label.into(), colour, dash, marker: None }
    }
}

impl Figure {
    /// The SVG document, with `<title>` tooltips and `data-key`s.
    pub fn to_svg(&self) -> String {
        register_font();
        let mut out = String::with_capacity(64 * 1024);
        let marks = svg::SharedMarks::default();
        {
            let canvas = svg::SvgCanvas::new(&mut out, self.size, &self.title, marks.clone());
            let root = canvas.into_drawing_area();
            // Only the SVG writer's own (infallible) errors could stop it.
            let _ = draw::figure(self, &root, Some(&marks)).and_then(|()| root.present().map_err(|e| anyhow!("{e}")));
        }
        out
    }

    /// A PNG image.
    pub fn to_png(&self) -> anyhow::Result<Vec<u8>> {
        register_font();
        let (w, h) = self.size;
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, self.size).into_drawing_area();
            draw::figure(self, &root, None)?;
            root.present().map_err(|e| anyhow!("{e}"))?;
        }
        let mut png = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut png),
            &rgb,
            w,
            h,
            image::ColorType::Rgb8,
        )
        .context("encoding the PNG")?;
        Ok(png)
    }

    /// Writes `path` as SVG or PNG, by its extension.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = match path.extension().and_then(|e| e.to_str()) {
            Some("svg") => self.to_svg().into_bytes(),
            Some("png") => self.to_png()?,
            _ => return Err(anyhow!("{}: figures are .svg or .png", path.display())),
        };
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Only fails on malformed font data, which include_bytes! of a known file rules out.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// A tick or tooltip number: short, with three significant digits (the one rounding every
/// table and chart shows, [`trainer::summary::display_number`]).
pub fn number(v: f64) -> String {
    trainer::summary::display_number(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(key: &str, alpha: Option<f64>, tau: Option<u64>, k: f64) -> Line {
        let points: Vec<(f64, f64)> =
            (0..30).map(|i| i as f64 * 0.1).map(|d| (d, d * (k - 0.5 * (d + 1e-9).ln()))).collect();
        Line {
            key: key.into(),
            label: format!("run {key}"),
            kind: LineKind::Main,
            colour: colour::alpha_colour(alpha),
            dash: Dash::for_tau(tau),
            marker: None,
            hover: points.iter().map(|&(x, y)| Hover { x, y, text: format!("run {key} x={x} y={y}") }).collect(),
            points,
        }
    }

    fn figure() -> Figure {
        Figure {
            title: "gold reward vs KL".into(),
            size: (1000, 560),
            panels: vec![
                Panel {
                    title: "DPO".into(),
                    x: Axis::new("sqrt(KL to π_init)"),
                    y: Axis::new("gold reward"),
                    lines: vec![line("1", None, None, 0.5), line("2", Some(0.6), Some(1), 0.7)],
                    legend: vec![LegendEntry::line("τ = 1", colour::FIXED_REFERENCE, Dash::Solid)],
                    ..Panel::default()
                },
                Panel {
                    title: "IPO".into(),
                    x: Axis { label: "KL".into(), log: true },
                    y: Axis::new("gold reward"),
                    lines: vec![line("3", Some(1.0), Some(100), 0.8)],
                    markers: vec![Marker {
                        key: "3".into(),
                        x: 1.0,
                        y: 0.8,
                        colour: colour::SECONDARY,
                        shape: Shape::Cross,
                        text: "peak".into(),
                    }],
                    ..Panel::default()
                },
                Panel { title: "KTO".into(), empty_note: "no evaluations yet".into(), ..Panel::default() },
            ],
            colour_bar: true,
            legend: vec![LegendEntry {
                label: "β = 0.2".into(),
                colour: colour::GRID,
                dash: Dash::Solid,
                marker: Some(MarkShape::Square),
            }],
        }
    }

    #[test]
    fn an_svg_figure_labels_every_run_line_and_draws_a_colour_bar() {
        let svg = figure().to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for key in ["1", "2", "3"] {
            assert_eq!(
                svg.matches(&format!("data-key=\"{key}\" class=\"run-line\"")).count(),
                1,
                "one line for run {key}"
            );
        }
        assert!(svg.contains("stroke-dasharray=\"8 4\""), "τ = 100 is dashed");
        assert!(svg.contains("β = 0.2") && svg.contains("τ = 1"), "the legend, below the plots");
        assert!(svg.contains("class=\"colour-bar\""));
        assert!(svg.contains("<title>run 2 x=0.5 y="), "hover tooltips");
        assert!(svg.contains("no evaluations yet"));
        assert!(svg.contains("gold reward vs KL") && svg.contains("sqrt(KL to π_init)"));
    }

    #[test]
    fn a_png_figure_has_text_without_system_fonts() {
        let png = figure().to_png().unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 10_000, "a real image: {} bytes", png.len());
    }

    #[test]
    fn save_picks_the_format_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        figure().save(&dir.path().join("f.svg")).unwrap();
        assert!(figure().save(&dir.path().join("f.gif")).is_err());
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(1.23456), "1.23");
        assert_eq!(number(0.000_5), "0.0005");
        assert_eq!(number(1234.0), "1234");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(1e-7), "1.00e-7");
    }
}
