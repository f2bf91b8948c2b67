//! The plotters drawing of a [`Figure`], for either backend. With `marks` (the SVG canvas) the
//! elements are labelled and dashes are native; without (PNG), dashes are drawn as segments and
//! the invisible hover targets are left out. The legend goes in a strip below the plots, so it
//! never covers data.

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::colour::{self, MarkShape, ALPHA_MAX, ALPHA_MIN};
use super::svg::{Marks, SharedMarks};
use super::{number, Figure, LegendEntry, LineKind, Panel, Shape};

const COLOUR_BAR_WIDTH: u32 = 92;
/// One legend entry's glyph (line sample) and the gap after its text.
const GLYPH: i32 = 30;
const ENTRY_GAP: i32 = 22;
const LEGEND_ROW: i32 = 20;
/// Markers along a line, evenly spaced by point index.
const MARKERS_PER_LINE: usize = 7;

pub(super) fn figure<DB: DrawingBackend>(
    fig: &Figure,
    root: &DrawingArea<DB, Shift>,
    marks: Option<&SharedMarks>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(err)?;
    let area = if fig.title.is_empty() {
        root.clone()
    } else {
        root.titled(&fig.title, ("sans-serif", 20).into_font().color(&BLACK)).map_err(err)?
    };
    let entries = legend_entries(fig);
    let (width, height) = area.dim_in_pixel();
    let rows = legend_rows(&area, &entries, width as i32 - 16);
    let strip = if rows.is_empty() { 0 } else { LEGEND_ROW * rows.len() as i32 + 12 };
    let (plots, legend_area) = area.split_vertically(height.saturating_sub(strip as u32));
    let (main, bar) = if fig.colour_bar {
        let (main, bar) = plots.split_horizontally(width.saturating_sub(COLOUR_BAR_WIDTH));
        (main, Some(bar))
    } else {
        (plots, None)
    };
    let regions = main.split_evenly((1, fig.panels.len().max(1)));
    for (panel, region) in fig.panels.iter().zip(&regions) {
        panel_chart(panel, region, marks)?;
    }
    if let Some(bar) = bar {
        set(marks, Marks { class: Some("colour-bar"), ..Marks::default() });
        colour_bar(&bar).map_err(err)?;
        set(marks, Marks::default());
    }
    if !rows.is_empty() {
        set(marks, Marks { class: Some("legend"), ..Marks::default() });
        legend(&legend_area, &rows).map_err(err)?;
        set(marks, Marks::default());
    }
    Ok(())
}

fn set(marks: Option<&SharedMarks>, value: Marks) {
    if let Some(m) = marks {
        *m.borrow_mut() = value;
    }
}

/// The figure's own legend, then every panel's, each label once.
fn legend_entries(fig: &Figure) -> Vec<&LegendEntry> {
    let mut out: Vec<&LegendEntry> = Vec::new();
    for e in fig.legend.iter().chain(fig.panels.iter().flat_map(|p| &p.legend)) {
        if !out.iter().any(|o| o.label == e.label) {
            out.push(e);
        }
    }
    out
}

/// Entries laid out in rows that fit `width` pixels: (x offset, entry).
fn legend_rows<'a, DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[&'a LegendEntry],
    width: i32,
) -> Vec<Vec<(i32, &'a LegendEntry)>> {
    let font = ("sans-serif", 12).into_font();
    let style = font.into_text_style(area);
    let mut rows: Vec<Vec<(i32, &LegendEntry)>> = Vec::new();
    let mut x = 0;
    for e in entries {
        let text = area.estimate_text_size(&e.label, &style).map_or(e.label.len() as i32 * 7, |s| s.0 as i32);
        let w = GLYPH + 6 + text + ENTRY_GAP;
        if rows.is_empty() || (x + w > width && x > 0) {
            rows.push(Vec::new());
            x = 0;
        }
        rows.last_mut().expect("a row").push((x, *e));
        x += w;
    }
    rows
}

/// The data range, padded; (0, 1) when there is none.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    lo: f64,
    hi: f64,
}

impl Bounds {
    fn new() -> Self {
        Self { lo: f64::INFINITY, hi: f64::NEG_INFINITY }
    }

    fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.lo = self.lo.min(v);
            self.hi = self.hi.max(v);
        }
    }

    fn is_empty(self) -> bool {
        self.lo > self.hi
    }

    fn padded(self) -> (f64, f64) {
        if self.is_empty() {
            return (0.0, 1.0);
        }
        let d = if self.hi > self.lo { (self.hi - self.lo) * 0.04 } else { self.lo.abs().max(1.0) * 0.1 };
        (self.lo - d, self.hi + d)
    }
}

fn panel_chart<DB: DrawingBackend>(
    panel: &Panel,
    area: &DrawingArea<DB, Shift>,
    marks: Option<&SharedMarks>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    let (x_log, y_log) = (panel.x.log, panel.y.log);
    let tx = move |x: f64| if x_log { (x > 0.0).then(|| x.log10()) } else { Some(x) };
    let ty = move |y: f64| if y_log { (y > 0.0).then(|| y.log10()) } else { Some(y) };
    let point = move |(x, y): (f64, f64)| Some((tx(x)?, ty(y)?)).filter(|(x, y)| x.is_finite() && y.is_finite());

    let (mut xb, mut yb) = (Bounds::new(), Bounds::new());
    let mut include = |p: Option<(f64, f64)>| {
        if let Some((x, y)) = p {
            xb.add(x);
            yb.add(y);
        }
    };
    for line in &panel.lines {
        line.points.iter().for_each(|&p| include(point(p)));
    }
    for band in &panel.bands {
        for &(x, lo, hi) in &band.points {
            include(point((x, lo)));
            include(point((x, hi)));
        }
    }
    for m in &panel.markers {
        include(point((m.x, m.y)));
    }
    let empty = xb.is_empty();
    let categories = &panel.y_categories;
    let ((x0, x1), (y0, y1)) = if categories.is_empty() {
        (xb.padded(), yb.padded())
    } else {
        (xb.padded(), (-0.6, categories.len() as f64 - 0.4))
    };
    let label_font = ("sans-serif", 13).into_font();
    let y_label_width = if categories.is_empty() {
        62
    } else {
        let style = label_font.clone().into_text_style(area);
        categories.iter().filter_map(|c| area.estimate_text_size(c, &style).ok()).map(|s| s.0).max().unwrap_or(0) + 24
    };

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(8)
        .margin_right(18)
        .x_label_area_size(44)
        .y_label_area_size(y_label_width)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let x_tick = move |v: &f64| if x_log { number(10f64.powf(*v)) } else { tick(*v, x1 - x0) };
    let y_tick = move |v: &f64| {
        if categories.is_empty() {
            return if y_log { number(10f64.powf(*v)) } else { tick(*v, y1 - y0) };
        }
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 {
            categories.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let x_desc = if x_log { format!("{} (log)", panel.x.label) } else { panel.x.label.clone() };
    let y_desc = if y_log { format!("{} (log)", panel.y.label) } else { panel.y.label.clone() };
    let y_labels = if categories.is_empty() { 6 } else { categories.len() * 2 + 2 };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(6)
        .y_labels(y_labels)
        .label_style(label_font)
        .axis_desc_style(("sans-serif", 14))
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .bold_line_style(colour::GRID)
        .light_line_style(colour::GRID.mix(0.35))
        .draw()
        .map_err(err)?;
    if empty {
        let style =
            ("sans-serif", 15).into_font().color(&RGBColor(90, 90, 90)).pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .plotting_area()
            .draw(&Text::new(panel.empty_note.clone(), ((x0 + x1) / 2.0, (y0 + y1) / 2.0), style))
            .map_err(err)?;
    }

    for band in &panel.bands {
        let upper = band.points.iter().filter_map(|&(x, _, hi)| point((x, hi)));
        let lower: Vec<(f64, f64)> = band.points.iter().filter_map(|&(x, lo, _)| point((x, lo))).collect();
        let outline: Vec<(f64, f64)> = upper.chain(lower.into_iter().rev()).collect();
        set(marks, Marks { key: Some(band.key.clone()), class: Some("band"), ..Marks::default() });
        chart.draw_series(std::iter::once(Polygon::new(outline, band.colour.mix(0.18).filled()))).map_err(err)?;
    }

    let pixels = chart.plotting_area().strip_coord_spec();
    let origin = chart.plotting_area().get_base_pixel();
    for kind in [LineKind::Raw, LineKind::Fit, LineKind::Main] {
        for line in panel.lines.iter().filter(|l| l.kind == kind) {
            let points: Vec<(f64, f64)> = line.points.iter().filter_map(|&p| point(p)).collect();
            if points.is_empty() {
                continue;
            }
            let (width, opacity) = match kind {
                LineKind::Main => (2, 1.0),
                LineKind::Raw => (1, 0.3),
                LineKind::Fit => (2, 0.85),
            };
            let style = ShapeStyle { color: line.colour.mix(opacity), filled: false, stroke_width: width };
            set(
                marks,
                Marks {
                    key: Some(line.key.clone()),
                    class: Some(kind.class()),
                    title: Some(line.label.clone()),
                    dasharray: line.dash.dasharray(),
                    hover: false,
                },
            );
            if marks.is_some() {
                // SVG: one polyline, dashed natively.
                chart.draw_series(LineSeries::new(points.iter().copied(), style)).map_err(err)?;
            } else {
                // PNG: the bitmap backend draws a wide polyline with mitred joins, which spike far
                // out where a noisy path turns back; pieces of two points each have no joins. A
                // dash pattern is walked along the path in pixels.
                let path: Vec<(i32, i32)> = points
                    .iter()
                    .map(|&p| {
                        let (x, y) = chart.backend_coord(&p);
                        (x - origin.0, y - origin.1)
                    })
                    .collect();
                let segments = match line.dash.pattern() {
                    None => vec![path],
                    Some(pattern) => dash_segments(&path, pattern),
                };
                for segment in segments {
                    for piece in segment.windows(2) {
                        pixels.draw(&PathElement::new(piece.to_vec(), style)).map_err(err)?;
                    }
                }
            }
            if let (Some(shape), LineKind::Main) = (line.marker, kind) {
                set(marks, Marks { key: Some(line.key.clone()), class: Some("line-marker"), ..Marks::default() });
                let n = points.len();
                let mut at: Vec<usize> =
                    (0..MARKERS_PER_LINE).map(|i| i * (n - 1) / (MARKERS_PER_LINE - 1).max(1)).collect();
                at.dedup();
                for i in at {
                    let (x, y) = chart.backend_coord(&points[i]);
                    mark_shape(&pixels, (x - origin.0, y - origin.1), shape, line.colour).map_err(err)?;
                }
            }
        }
    }

    for m in &panel.markers {
        let Some(at) = point((m.x, m.y)) else { continue };
        set(
            marks,
            Marks { key: Some(m.key.clone()), class: Some("marker"), title: Some(m.text.clone()), ..Marks::default() },
        );
        let area = chart.plotting_area();
        match m.shape {
            Shape::Circle => {
                area.draw(&Circle::new(at, 6, m.colour.filled())).map_err(err)?;
                area.draw(&Circle::new(at, 6, BLACK.stroke_width(1))).map_err(err)?;
            }
            Shape::Ring => {
                area.draw(&Circle::new(at, 5, WHITE.filled())).map_err(err)?;
                area.draw(&Circle::new(at, 5, m.colour.stroke_width(2))).map_err(err)?;
            }
            Shape::Triangle => area.draw(&TriangleMarker::new(at, 7, m.colour.filled())).map_err(err)?,
            Shape::Cross => area.draw(&Cross::new(at, 6, m.colour.stroke_width(2))).map_err(err)?,
        }
    }

    if let Some(shared) = marks {
        for line in panel.lines.iter().filter(|l| l.kind == LineKind::Main) {
            let targets = line.hover.iter().filter_map(|h| {
                let at = point((h.x, h.y))?;
                *shared.borrow_mut() = Marks {
                    key: Some(line.key.clone()),
                    class: Some("hover"),
                    title: Some(h.text.clone()),
                    dasharray: None,
                    hover: true,
                };
                Some(Circle::new(at, 5, BLACK.filled()))
            });
            chart.draw_series(targets).map_err(err)?;
        }
    }
    set(marks, Marks::default());
    Ok(())
}

/// A tick label on a linear axis spanning `span`: as many decimals as the ticks' spacing needs
/// (two ticks 0.0003 apart are not both "0.693"), and 0 for what is zero but for rounding.
fn tick(v: f64, span: f64) -> String {
    let spacing = span / 6.0;
    if !(spacing.is_finite() && spacing > 0.0 && v.is_finite()) {
        return number(v);
    }
    if v.abs() < spacing * 1e-6 {
        return "0".into();
    }
    if v.abs() >= 1e6 || v.abs() < 1e-4 {
        return number(v);
    }
    let decimals = (1 - spacing.log10().floor() as i32).clamp(0, 8) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The on-segments of `pattern` (alternating on and off lengths, in pixels) along a path.
fn dash_segments(path: &[(i32, i32)], pattern: &[u32]) -> Vec<Vec<(i32, i32)>> {
    let mut out: Vec<Vec<(i32, i32)>> = Vec::new();
    let (mut index, mut left) = (0usize, f64::from(pattern[0]));
    let mut current: Vec<(i32, i32)> = Vec::new();
    for w in path.windows(2) {
        let (a, b) = ((f64::from(w[0].0), f64::from(w[0].1)), (f64::from(w[1].0), f64::from(w[1].1)));
        let length = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let mut done = 0.0;
        while done < length {
            let step = left.min(length - done);
            let on = index.is_multiple_of(2);
            let at = |t: f64| {
                ((a.0 + (b.0 - a.0) * t / length).round() as i32, (a.1 + (b.1 - a.1) * t / length).round() as i32)
            };
            if on {
                if current.is_empty() {
                    current.push(at(done));
                }
                current.push(at(done + step));
            }
            done += step;
            left -= step;
            if left <= 1e-9 {
                if on && current.len() > 1 {
                    out.push(std::mem::take(&mut current));
                }
                current.clear();
                index = (index + 1) % pattern.len();
                left = f64::from(pattern[index]);
            }
        }
    }
    if current.len() > 1 {
        out.push(current);
    }
    out
}

/// A marker shape centred at a pixel.
fn mark_shape<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (x, y): (i32, i32),
    shape: MarkShape,
    colour: RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (fill, edge) = (colour.filled(), colour.stroke_width(2));
    match shape {
        MarkShape::Circle => area.draw(&Circle::new((x, y), 4, fill)),
        MarkShape::Square => area.draw(&Rectangle::new([(x - 4, y - 4), (x + 4, y + 4)], fill)),
        MarkShape::Triangle => area.draw(&Polygon::new(vec![(x, y - 5), (x + 5, y + 4), (x - 5, y + 4)], fill)),
        MarkShape::Diamond => area.draw(&Polygon::new(vec![(x, y - 5), (x + 5, y), (x, y + 5), (x - 5, y)], fill)),
        MarkShape::Cross => {
            area.draw(&PathElement::new(vec![(x - 4, y - 4), (x + 4, y + 4)], edge))?;
            area.draw(&PathElement::new(vec![(x - 4, y + 4), (x + 4, y - 4)], edge))
        }
        MarkShape::Plus => {
            area.draw(&PathElement::new(vec![(x - 5, y), (x + 5, y)], edge))?;
            area.draw(&PathElement::new(vec![(x, y - 5), (x, y + 5)], edge))
        }
    }
}

/// The legend strip: each entry's line sample (in its dash, with its marker) and label.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    rows: &[Vec<(i32, &LegendEntry)>],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let font = ("sans-serif", 12).into_font();
    for (r, row) in rows.iter().enumerate() {
        let y = 6 + LEGEND_ROW * r as i32 + LEGEND_ROW / 2;
        for &(x, e) in row {
            let (start, end) = (x + 10, x + 10 + GLYPH);
            let style = ShapeStyle { color: e.colour.to_rgba(), filled: false, stroke_width: 2 };
            let path = vec![(start, y), (end, y)];
            let segments = match e.dash.pattern() {
                None => vec![path],
                Some(pattern) => dash_segments(&path, pattern),
            };
            for segment in segments {
                area.draw(&PathElement::new(segment, style))?;
            }
            if let Some(shape) = e.marker {
                mark_shape(area, ((start + end) / 2, y), shape, e.colour)?;
            }
            let text = font.clone().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
            area.draw(&Text::new(e.label.clone(), (end + 6, y), text))?;
        }
    }
    Ok(())
}

/// α's log colour scale, from [`ALPHA_MIN`] to [`ALPHA_MAX`], and the colour of runs with a
/// fixed reference below it.
fn colour_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (_, h) = area.dim_in_pixel();
    let (x0, x1) = (14i32, 34i32);
    let (top, bottom) = (44i32, h as i32 - 110);
    if bottom <= top + 20 {
        return Ok(());
    }
    let caption = ("sans-serif", 16).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Bottom));
    area.draw(&Text::new("α", (x0, top - 8), caption))?;
    let y_of = |alpha: f64| bottom - (colour::alpha_position(alpha) * f64::from(bottom - top)).round() as i32;
    let steps = 64;
    for i in 0..steps {
        let (t0, t1) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
        let alpha = 10f64.powf(ALPHA_MIN.log10() + (ALPHA_MAX.log10() - ALPHA_MIN.log10()) * (t0 + t1) / 2.0);
        let (ya, yb) = (bottom - (t0 * f64::from(bottom - top)) as i32, bottom - (t1 * f64::from(bottom - top)) as i32);
        // One pixel of overlap: rounding would otherwise leave white seams between the steps.
        area.draw(&Rectangle::new([(x0, yb), (x1, ya + 1)], colour::alpha_colour(Some(alpha)).filled()))?;
    }
    area.draw(&Rectangle::new([(x0, top), (x1, bottom)], BLACK.stroke_width(1)))?;
    let label = ("sans-serif", 12).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    for tick in [0.01, 0.03, 0.1, 0.3, 1.0] {
        let y = y_of(tick);
        area.draw(&PathElement::new(vec![(x1, y), (x1 + 4, y)], BLACK.stroke_width(1)))?;
        area.draw(&Text::new(number(tick), (x1 + 7, y), label.clone()))?;
    }
    let fixed_top = bottom + 26;
    area.draw(&Rectangle::new([(x0, fixed_top), (x1, fixed_top + 12)], colour::FIXED_REFERENCE.filled()))?;
    let small = ("sans-serif", 11).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Top));
    area.draw(&Text::new("fixed", (x0, fixed_top + 16), small.clone()))?;
    area.draw(&Text::new("reference", (x0, fixed_top + 29), small))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_have_the_decimals_their_spacing_needs() {
        assert_eq!((tick(0.6932, 0.002), tick(0.6935, 0.002)), ("0.6932".to_string(), "0.6935".to_string()));
        assert_eq!(tick(-5.55e-17, 2.0), "0");
        assert_eq!(tick(1500.0, 2000.0), "1500");
        assert_eq!(tick(0.25, 1.5), "0.25");
    }

    #[test]
    fn dashes_walk_the_pattern_along_the_path() {
        let segments = dash_segments(&[(0, 0), (30, 0)], &[8, 4]);
        let lengths: Vec<i32> = segments.iter().map(|s| s.last().unwrap().0 - s[0].0).collect();
        assert_eq!(lengths, vec![8, 8, 6], "on 8, off 4, on 8, off 4, on 6");
        // Across a corner, a dash continues on the next leg.
        let bent = dash_segments(&[(0, 0), (5, 0), (5, 10)], &[8, 4]);
        assert_eq!(bent[0], vec![(0, 0), (5, 0), (5, 3)]);
    }
}
