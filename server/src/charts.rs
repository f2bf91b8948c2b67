//! Sweep figures drawn with plotters: pure series in, SVG or PNG out (by the file extension).
//!
//! PNG text needs a font and the machine may have none: DejaVu Sans is embedded in the binary
//! (assets/fonts, Bitstream Vera licence) and registered with plotters' `ab_glyph` renderer.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (1000, 620);

/// One run's curve. Colour follows `alpha` on a log-scaled colormap (black when the reference is
/// fixed); the dash pattern follows `tau`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// `None`: vanilla (fixed reference).
    pub alpha: Option<f64>,
    pub tau: Option<u64>,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Draws `chart` to `path` (`.svg` or `.png`).
pub fn draw(chart: &Chart, path: &Path) -> anyhow::Result<()> {
    // Both backends measure text with the registered font to lay out the chart.
    register_font();
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => draw_on(chart, &SVGBackend::new(path, SIZE).into_drawing_area()),
        Some("png") => {
            let area = BitMapBackend::new(path, SIZE).into_drawing_area();
            draw_on(chart, &area)?;
            area.present().map_err(|e| anyhow!("{e}"))
        }
        _ => Err(anyhow!("{}: charts are .svg or .png", path.display())),
    }
    .with_context(|| format!("drawing {}", path.display()))
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Only fails on malformed font data, which include_bytes! of a known file rules out.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn draw_on<DB: DrawingBackend>(chart: &Chart, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;
    let alphas: Vec<f64> = chart.series.iter().filter_map(|s| s.alpha).filter(|a| *a > 0.0).collect();
    let alpha_range =
        (alphas.iter().copied().fold(f64::INFINITY, f64::min), alphas.iter().copied().fold(0.0, f64::max));
    let (main, bar) = root.split_horizontally(SIZE.0 - 110);

    let points = chart.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |lo: f64, hi: f64| {
        let d = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
        (lo - d, hi + d)
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));

    let mut plot = ChartBuilder::on(&main)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    plot.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;

    let mut taus: Vec<u64> = chart.series.iter().filter_map(|s| s.tau).collect();
    taus.sort_unstable();
    taus.dedup();
    for s in &chart.series {
        let color = match s.alpha {
            Some(a) if a > 0.0 => alpha_color(a, alpha_range),
            _ => BLACK,
        };
        let style = ShapeStyle { color: color.to_rgba(), filled: false, stroke_width: 2 };
        // τ = 1 (or vanilla) is solid; larger τ get longer gaps, in the order of τ.
        let dash = s.tau.and_then(|t| taus.iter().position(|&u| u == t)).filter(|_| s.tau != Some(1)).map(|i| i as u32);
        let pts = s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite());
        let drawn = match dash {
            None => plot.draw_series(LineSeries::new(pts, style)).map_err(err)?,
            Some(i) => plot.draw_series(DashedLineSeries::new(pts, 6 + 2 * i, 3 + 3 * i, style)).map_err(err)?,
        };
        drawn.label(&s.label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    plot.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;

    if !alphas.is_empty() {
        colour_bar(&bar, alpha_range).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// `α` on a log scale: the sweeps span orders of magnitude (0.01 … 0.9).
fn alpha_color(alpha: f64, (lo, hi): (f64, f64)) -> RGBColor {
    let (l, h) = (lo.log10(), hi.log10());
    let t = if h > l { (alpha.log10() - l) / (h - l) } else { 0.5 };
    ViridisRGB::get_color_normalized(t.clamp(0.0, 1.0), 0.0, 1.0)
}

fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (lo, hi): (f64, f64),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo / 2.0, hi * 2.0) };
    let mut bar = ChartBuilder::on(area)
        .caption("α", ("sans-serif", 18))
        .margin_top(40)
        .margin_bottom(56)
        .margin_right(8)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, (lo..hi).log_scale())?;
    bar.configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .disable_y_mesh()
        .y_label_style(("sans-serif", 12))
        .y_label_formatter(&|v| format!("{v:.3}"))
        .draw()?;
    let steps = 64;
    let (l, h) = (lo.log10(), hi.log10());
    bar.draw_series((0..steps).map(|i| {
        let a = 10f64.powf(l + (h - l) * i as f64 / steps as f64);
        let b = 10f64.powf(l + (h - l) * (i + 1) as f64 / steps as f64);
        Rectangle::new([(0.0, a), (1.0, b)], alpha_color(a, (lo, hi)).filled())
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        let series = |label: &str, alpha: Option<f64>, tau: Option<u64>, k: f64| Series {
            label: label.into(),
            alpha,
            tau,
            points: (0..30).map(|i| i as f64 * 0.1).map(|d| (d, d * (k - 0.5 * (d + 1e-9).ln()))).collect(),
        };
        Chart {
            title: "gold reward vs KL".into(),
            x_label: "sqrt(KL to π_init)".into(),
            y_label: "gold reward".into(),
            series: vec![
                series("DPO", None, None, 0.5),
                series("TR α=0.01", Some(0.01), Some(1), 0.6),
                series("TR α=0.6", Some(0.6), Some(1), 0.7),
                series("TR τ=100", Some(1.0), Some(100), 0.8),
            ],
        }
    }

    #[test]
    fn a_chart_renders_to_svg_with_its_labels_and_colour_bar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        draw(&chart(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for needle in ["gold reward vs KL", "TR α=0.6", "TR τ=100", "α"] {
            assert!(svg.contains(needle), "missing {needle}");
        }
        assert!(svg.matches("<polyline").count() + svg.matches("<path").count() >= 4);
    }

    #[test]
    fn a_chart_renders_to_png_with_text_and_without_system_fonts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        draw(&chart(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 10_000, "a real image: {} bytes", bytes.len());
    }

    #[test]
    fn an_unknown_extension_is_an_error() {
        assert!(draw(&chart(), Path::new("/tmp/x.gif")).is_err());
    }
}
