//! An SVG backend for plotters that can label what it draws: the chart code sets [`Marks`]
//! before drawing a run's line or a point, and the elements come out with `data-key` (for legend
//! toggling), a class (for tests and styles), a `stroke-dasharray` and a `<title>` (a tooltip).
//! plotters' own `SVGBackend` writes bare elements and draws dashes as one element per dash.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;

use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind, FontStyle,
    FontTransform,
};

/// What the next elements are; the chart code sets and clears it around each series.
#[derive(Debug, Default, Clone)]
pub struct Marks {
    /// `data-key`: the run (or group of runs) the element belongs to.
    pub key: Option<String>,
    pub class: Option<&'static str>,
    /// A `<title>` child: the tooltip.
    pub title: Option<String>,
    pub dasharray: Option<String>,
    /// An invisible hover target rather than a visible shape.
    pub hover: bool,
}

pub type SharedMarks = Rc<RefCell<Marks>>;

pub struct SvgCanvas<'a> {
    out: &'a mut String,
    size: (u32, u32),
    marks: SharedMarks,
    closed: bool,
}

#[derive(Debug)]
pub struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unreachable")
    }
}

impl std::error::Error for Never {}

fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            other => out.push(other),
        }
    }
}

fn colour(c: BackendColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.rgb.0, c.rgb.1, c.rgb.2)
}

impl<'a> SvgCanvas<'a> {
    /// Writes the opening `<svg>` into `out`; `label` is the chart's accessible name.
    pub fn new(out: &'a mut String, size: (u32, u32), label: &str, marks: SharedMarks) -> Self {
        let _ = write!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" \
             height=\"{h}\" role=\"img\" font-family=\"DejaVu Sans, Verdana, sans-serif\"><title>",
            w = size.0,
            h = size.1
        );
        escape(out, label);
        out.push_str("</title>\n");
        Self { out, size, marks, closed: false }
    }

    /// Writes `<tag attrs… [data-key class dasharray]>` plus the title, and closes it.
    fn element(&mut self, tag: &str, attrs: &[(&str, String)]) {
        let marks = self.marks.borrow();
        let out = &mut *self.out;
        out.push('<');
        out.push_str(tag);
        for (k, v) in attrs {
            let _ = write!(out, " {k}=\"");
            escape(out, v);
            out.push('"');
        }
        if let Some(key) = &marks.key {
            out.push_str(" data-key=\"");
            escape(out, key);
            out.push('"');
        }
        if let Some(class) = marks.class {
            let _ = write!(out, " class=\"{class}\"");
        }
        if let Some(dash) = &marks.dasharray {
            let _ = write!(out, " stroke-dasharray=\"{dash}\"");
        }
        match &marks.title {
            Some(title) => {
                out.push_str("><title>");
                escape(out, title);
                let _ = writeln!(out, "</title></{tag}>");
            }
            None => out.push_str("/>\n"),
        }
    }

    fn points(path: impl IntoIterator<Item = BackendCoord>) -> String {
        let mut s = String::new();
        for (x, y) in path {
            let _ = write!(s, "{x},{y} ");
        }
        s.pop();
        s
    }

    fn paint(style: &impl BackendStyle) -> (String, String) {
        let c = style.color();
        (colour(c), if c.alpha >= 1.0 { String::new() } else { format!("{:.3}", c.alpha) })
    }
}

impl DrawingBackend for SvgCanvas<'_> {
    type ErrorType = Never;

    fn get_size(&self) -> (u32, u32) {
        self.size
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Never>> {
        Ok(())
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Never>> {
        if !self.closed {
            self.out.push_str("</svg>\n");
            self.closed = true;
        }
        Ok(())
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), DrawingErrorKind<Never>> {
        if color.alpha == 0.0 {
            return Ok(());
        }
        let attrs = [
            ("x", point.0.to_string()),
            ("y", point.1.to_string()),
            ("width", "1".into()),
            ("height", "1".into()),
            ("fill", colour(color)),
        ];
        self.element("rect", &attrs);
        Ok(())
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Never>> {
        if style.color().alpha == 0.0 {
            return Ok(());
        }
        let (stroke, opacity) = Self::paint(style);
        let mut attrs = vec![
            ("x1", from.0.to_string()),
            ("y1", from.1.to_string()),
            ("x2", to.0.to_string()),
            ("y2", to.1.to_string()),
            ("stroke", stroke),
            ("stroke-width", style.stroke_width().to_string()),
        ];
        if !opacity.is_empty() {
            attrs.push(("stroke-opacity", opacity));
        }
        self.element("line", &attrs);
        Ok(())
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Never>> {
        if style.color().alpha == 0.0 {
            return Ok(());
        }
        let (paint, opacity) = Self::paint(style);
        let mut attrs = vec![
            ("x", upper_left.0.to_string()),
            ("y", upper_left.1.to_string()),
            ("width", (bottom_right.0 - upper_left.0).to_string()),
            ("height", (bottom_right.1 - upper_left.1).to_string()),
        ];
        if fill {
            attrs.push(("fill", paint));
            if !opacity.is_empty() {
                attrs.push(("fill-opacity", opacity));
            }
        } else {
            attrs.extend([("fill", "none".into()), ("stroke", paint)]);
            if !opacity.is_empty() {
                attrs.push(("stroke-opacity", opacity));
            }
        }
        self.element("rect", &attrs);
        Ok(())
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Never>> {
        if style.color().alpha == 0.0 {
            return Ok(());
        }
        let (stroke, opacity) = Self::paint(style);
        let mut attrs = vec![
            ("points", Self::points(path)),
            ("fill", "none".into()),
            ("stroke", stroke),
            ("stroke-width", style.stroke_width().to_string()),
            ("stroke-linejoin", "round".into()),
        ];
        if !opacity.is_empty() {
            attrs.push(("stroke-opacity", opacity));
        }
        self.element("polyline", &attrs);
        Ok(())
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Never>> {
        if style.color().alpha == 0.0 {
            return Ok(());
        }
        let (fill, opacity) = Self::paint(style);
        let mut attrs = vec![("points", Self::points(path)), ("fill", fill)];
        if !opacity.is_empty() {
            attrs.push(("fill-opacity", opacity));
        }
        self.element("polygon", &attrs);
        Ok(())
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Never>> {
        let hover = self.marks.borrow().hover;
        let mut attrs = vec![("cx", center.0.to_string()), ("cy", center.1.to_string()), ("r", radius.to_string())];
        if hover {
            // Invisible but hit-testable: the tooltip target.
            attrs.extend([("fill", "transparent".into()), ("pointer-events", "all".into())]);
        } else {
            if style.color().alpha == 0.0 {
                return Ok(());
            }
            let (paint, opacity) = Self::paint(style);
            if fill {
                attrs.push(("fill", paint));
            } else {
                attrs.extend([
                    ("fill", "none".into()),
                    ("stroke", paint),
                    ("stroke-width", style.stroke_width().to_string()),
                ]);
            }
            if !opacity.is_empty() {
                attrs.push(("opacity", opacity));
            }
        }
        self.element("circle", &attrs);
        Ok(())
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        (x, y): BackendCoord,
    ) -> Result<(), DrawingErrorKind<Never>> {
        let c = style.color();
        if c.alpha == 0.0 {
            return Ok(());
        }
        let anchor = match style.anchor().h_pos {
            HPos::Left => "start",
            HPos::Right => "end",
            HPos::Center => "middle",
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => "0.76em",
            VPos::Center => "0.5ex",
            VPos::Bottom => "-0.5ex",
        };
        let out = &mut *self.out;
        // plotters sizes fonts in pixels of its own text layout; SVG's em is about 1.24 times larger.
        let _ = write!(
            out,
            "<text x=\"{x}\" y=\"{y}\" dy=\"{dy}\" text-anchor=\"{anchor}\" font-size=\"{:.1}\" fill=\"{}\"",
            style.size() / 1.24,
            colour(c)
        );
        if let FontStyle::Bold = style.style() {
            out.push_str(" font-weight=\"bold\"");
        }
        let rotate = match style.transform() {
            FontTransform::Rotate90 => Some(90),
            FontTransform::Rotate180 => Some(180),
            FontTransform::Rotate270 => Some(270),
            FontTransform::None => None,
        };
        if let Some(angle) = rotate {
            let _ = write!(out, " transform=\"rotate({angle}, {x}, {y})\"");
        }
        out.push('>');
        escape(out, text);
        out.push_str("</text>\n");
        Ok(())
    }
}
