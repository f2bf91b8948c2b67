//! How runs are told apart on a chart. Colour follows α: with at most eight α values on a page
//! each gets its own clearly different colour, ordered from the smallest α to the largest; with
//! more, a fixed logarithmic viridis scale with a colour bar. Runs whose reference never moves
//! are near-black. Dash patterns follow τ (by rank among the page's τ values, so that each is
//! distinct even one pixel wide), and markers along the line tell apart the other parameters
//! that differ (β, learning rate, …).

use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::RGBColor;

/// The ends of the log scale: the paper sweeps α over orders of magnitude (0.01 … 1).
pub const ALPHA_MIN: f64 = 0.01;
pub const ALPHA_MAX: f64 = 1.0;
/// Viridis ends in a pale yellow that vanishes on white; stop before it.
const VIRIDIS_END: f64 = 0.88;
/// Runs whose reference never moves (vanilla DPO/IPO/KTO).
pub const FIXED_REFERENCE: RGBColor = RGBColor(34, 34, 34);
/// A second series next to the run's own colour (KL to the reference next to KL to π_init).
pub const SECONDARY: RGBColor = RGBColor(214, 39, 40);
pub const GRID: RGBColor = RGBColor(225, 225, 225);
/// Most α values that get categorical colours; more fall back to the log scale.
pub const MAX_CATEGORICAL: usize = 8;

/// Eight ordered, clearly different colours (indigo, blue, teal, green, olive, orange, red,
/// magenta: a hue walk), each with at least 3:1 contrast against white. Fewer values take evenly
/// spaced ones, so that four α values are indigo, teal, orange and magenta.
const CATEGORICAL: [RGBColor; MAX_CATEGORICAL] = [
    RGBColor(68, 33, 150),
    RGBColor(31, 104, 180),
    RGBColor(0, 128, 128),
    RGBColor(44, 140, 44),
    RGBColor(128, 120, 0),
    RGBColor(214, 110, 0),
    RGBColor(200, 36, 36),
    RGBColor(190, 30, 150),
];

/// α's colour on the fixed log scale; `None` (a fixed reference) is near-black.
pub fn alpha_colour(alpha: Option<f64>) -> RGBColor {
    let Some(alpha) = alpha.filter(|a| a.is_finite() && *a > 0.0) else { return FIXED_REFERENCE };
    ViridisRGB::get_color_normalized(alpha_position(alpha) * VIRIDIS_END, 0.0, 1.0)
}

/// Where α sits on the log colour scale, 0 … 1 (clamped).
pub fn alpha_position(alpha: f64) -> f64 {
    let (lo, hi) = (ALPHA_MIN.log10(), ALPHA_MAX.log10());
    ((alpha.log10() - lo) / (hi - lo)).clamp(0.0, 1.0)
}

pub fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// The α values of a page and their colours.
#[derive(Debug, Clone, PartialEq)]
pub struct AlphaScale {
    /// Distinct α values, ascending.
    values: Vec<f64>,
}

impl AlphaScale {
    pub fn new(alphas: impl IntoIterator<Item = f64>) -> Self {
        let mut values: Vec<f64> = alphas.into_iter().filter(|a| a.is_finite()).collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        Self { values }
    }

    /// Categorical colours (at most [`MAX_CATEGORICAL`] values); otherwise the log scale.
    pub fn is_categorical(&self) -> bool {
        self.values.len() <= MAX_CATEGORICAL
    }

    pub fn colour(&self, alpha: Option<f64>) -> RGBColor {
        let Some(alpha) = alpha else { return FIXED_REFERENCE };
        if !self.is_categorical() {
            return alpha_colour(Some(alpha));
        }
        let Some(rank) = self.values.iter().position(|v| *v == alpha) else { return alpha_colour(Some(alpha)) };
        let n = self.values.len();
        let index = if n == 1 { 0 } else { (rank * (MAX_CATEGORICAL - 1) + (n - 1) / 2) / (n - 1) };
        CATEGORICAL[index]
    }

    /// The α values with their colours, ascending (categorical scales only).
    pub fn entries(&self) -> Vec<(f64, RGBColor)> {
        if !self.is_categorical() {
            return Vec::new();
        }
        self.values.iter().map(|&a| (a, self.colour(Some(a)))).collect()
    }
}

/// Line patterns, each distinct from the others at one pixel wide: solid, dashes, dots,
/// dash-dot, long dashes, dash-dot-dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dash {
    Solid,
    Dashed,
    Dotted,
    DashDot,
    LongDashed,
    DashDotDot,
}

impl Dash {
    /// In the order the page's τ values take them, smallest τ first.
    pub const BY_RANK: [Dash; 6] =
        [Self::Solid, Self::Dashed, Self::Dotted, Self::DashDot, Self::LongDashed, Self::DashDotDot];

    /// By τ's order of magnitude, for pages with more τ values than patterns: τ = 1 (or a fixed
    /// reference) is solid.
    pub fn for_tau(tau: Option<u64>) -> Self {
        match tau {
            None | Some(0 | 1) => Self::Solid,
            Some(2..=10) => Self::Dotted,
            Some(11..=100) => Self::Dashed,
            Some(_) => Self::LongDashed,
        }
    }

    /// On and off lengths in pixels, alternating; `None` for a solid line.
    pub fn pattern(self) -> Option<&'static [u32]> {
        match self {
            Self::Solid => None,
            Self::Dashed => Some(&[8, 4]),
            Self::Dotted => Some(&[2, 4]),
            Self::DashDot => Some(&[10, 4, 2, 4]),
            Self::LongDashed => Some(&[18, 6]),
            Self::DashDotDot => Some(&[10, 3, 2, 3, 2, 3]),
        }
    }

    /// The SVG `stroke-dasharray`.
    pub fn dasharray(self) -> Option<String> {
        self.pattern().map(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))
    }
}

/// A marker repeated along a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkShape {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
    Plus,
}

impl MarkShape {
    pub const ALL: [MarkShape; 6] =
        [Self::Circle, Self::Square, Self::Triangle, Self::Diamond, Self::Cross, Self::Plus];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_eight_alphas_get_distinct_ordered_categorical_colours() {
        let scale = AlphaScale::new([0.6, 0.01, 0.1, 1.0, 0.6]);
        assert!(scale.is_categorical());
        let colours: Vec<RGBColor> = [0.01, 0.1, 0.6, 1.0].iter().map(|a| scale.colour(Some(*a))).collect();
        assert_eq!(colours, vec![CATEGORICAL[0], CATEGORICAL[2], CATEGORICAL[5], CATEGORICAL[7]]);
        assert_eq!(scale.colour(None), FIXED_REFERENCE);
        // Clearly different: no two of them within 100 in RGB distance.
        for (i, a) in colours.iter().enumerate() {
            for b in &colours[i + 1..] {
                let d = ((f64::from(a.0) - f64::from(b.0)).powi(2)
                    + (f64::from(a.1) - f64::from(b.1)).powi(2)
                    + (f64::from(a.2) - f64::from(b.2)).powi(2))
                .sqrt();
                assert!(d > 100.0, "{a:?} and {b:?} are too alike ({d:.0})");
            }
        }
        let eight = AlphaScale::new((1..=8).map(|i| f64::from(i) / 10.0));
        let all: std::collections::HashSet<String> =
            (1..=8).map(|i| hex(eight.colour(Some(f64::from(i) / 10.0)))).collect();
        assert_eq!(all.len(), 8);
    }

    #[test]
    fn more_than_eight_alphas_use_the_log_scale() {
        let scale = AlphaScale::new((1..=9).map(|i| f64::from(i) / 10.0));
        assert!(!scale.is_categorical() && scale.entries().is_empty());
        assert_eq!(scale.colour(Some(0.1)), alpha_colour(Some(0.1)));
        assert_eq!(alpha_colour(Some(0.001)), alpha_colour(Some(0.01)), "below the scale clamps");
        assert!((alpha_position(0.1) - 0.5).abs() < 1e-12, "log scale: 0.1 is half way from 0.01 to 1");
    }

    #[test]
    fn every_dash_pattern_is_distinct() {
        let arrays: std::collections::HashSet<Option<String>> = Dash::BY_RANK.iter().map(|d| d.dasharray()).collect();
        assert_eq!(arrays.len(), Dash::BY_RANK.len());
        assert_eq!(Dash::DashDot.dasharray().as_deref(), Some("10 4 2 4"));
        assert_eq!(Dash::for_tau(Some(1000)), Dash::LongDashed);
    }
}
