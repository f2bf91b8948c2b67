//! The plotters drawing of a [`Figure`], for either backend. With `marks` (the SVG canvas) the
//! elements are labelled and dashes are native; without (PNG), dashes are drawn as segments and
//! the invisible hover targets are left out.

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::colour::{self, ALPHA_MAX, ALPHA_MIN};
use super::svg::{Marks, SharedMarks};
use super::{number, Figure, LegendEntry, LineKind, Panel, Shape};

const COLOUR_BAR_WIDTH: u32 = 92;

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
    let width = area.dim_in_pixel().0;
    let (main, bar) = if fig.colour_bar {
        let (main, bar) = area.split_horizontally(width.saturating_sub(COLOUR_BAR_WIDTH));
        (main, Some(bar))
    } else {
        (area, None)
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
    Ok(())
}

fn set(marks: Option<&SharedMarks>, value: Marks) {
    if let Some(m) = marks {
        *m.borrow_mut() = value;
    }
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
    let ((x0, x1), (y0, y1)) = (xb.padded(), yb.padded());

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(8)
        .margin_right(18)
        .x_label_area_size(44)
        .y_label_area_size(62)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let x_tick = move |v: &f64| number(if x_log { 10f64.powf(*v) } else { *v });
    let y_tick = move |v: &f64| number(if y_log { 10f64.powf(*v) } else { *v });
    let x_desc = if x_log { format!("{} (log)", panel.x.label) } else { panel.x.label.clone() };
    let y_desc = if y_log { format!("{} (log)", panel.y.label) } else { panel.y.label.clone() };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(6)
        .y_labels(6)
        .label_style(("sans-serif", 13))
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
            match line.dash.pattern().filter(|_| marks.is_none()) {
                None => chart.draw_series(LineSeries::new(points, style)).map_err(err)?,
                Some((on, off)) => chart.draw_series(DashedLineSeries::new(points, on, off, style)).map_err(err)?,
            };
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

    if !panel.legend.is_empty() {
        set(marks, Marks { class: Some("legend"), ..Marks::default() });
        legend(&chart.plotting_area().strip_coord_spec(), &panel.legend).map_err(err)?;
        set(marks, Marks::default());
    }
    Ok(())
}

/// A legend box in the upper right corner of the plotting area, in pixels.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[LegendEntry],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let font = ("sans-serif", 12).into_font();
    let (w, _) = area.dim_in_pixel();
    let text_width = entries
        .iter()
        .map(|e| area.estimate_text_size(&e.label, &font.clone().into_text_style(area)).map_or(0, |s| s.0))
        .max()
        .unwrap_or(0);
    let (glyph, row) = (28i32, 17i32);
    let box_w = glyph + 14 + text_width as i32;
    let (x0, y0) = (w as i32 - box_w - 8, 6);
    let box_h = row * entries.len() as i32 + 8;
    area.draw(&Rectangle::new([(x0, y0), (x0 + box_w, y0 + box_h)], WHITE.mix(0.9).filled()))?;
    area.draw(&Rectangle::new([(x0, y0), (x0 + box_w, y0 + box_h)], colour::GRID.stroke_width(1)))?;
    for (i, e) in entries.iter().enumerate() {
        let y = y0 + 4 + row * i as i32 + row / 2;
        let style = ShapeStyle { color: e.colour.to_rgba(), filled: false, stroke_width: 2 };
        let (start, end) = (x0 + 6, x0 + 6 + glyph);
        match e.dash.pattern() {
            None => area.draw(&PathElement::new(vec![(start, y), (end, y)], style))?,
            Some((on, off)) => {
                let mut x = start;
                while x < end {
                    let to = (x + on as i32).min(end);
                    area.draw(&PathElement::new(vec![(x, y), (to, y)], style))?;
                    x = to + off as i32;
                }
            }
        }
        let text = font.clone().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(e.label.clone(), (end + 6, y), text))?;
    }
    Ok(())
}

/// α's colour scale, from [`ALPHA_MIN`] to [`ALPHA_MAX`] on a log axis, and the colour of runs
/// with a fixed reference below it.
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
