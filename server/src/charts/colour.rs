//! One colour and one dash pattern per run, the same on every page and in every figure: colour
//! follows α on a fixed logarithmic viridis scale, the dash pattern follows the order of
//! magnitude of τ. Neither depends on which other runs are on the chart.

use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::RGBColor;

/// The ends of the α scale: the paper sweeps α over orders of magnitude (0.01 … 1).
pub const ALPHA_MIN: f64 = 0.01;
pub const ALPHA_MAX: f64 = 1.0;
/// Viridis ends in a pale yellow that vanishes on white; stop before it.
const VIRIDIS_END: f64 = 0.88;
/// Runs whose reference never moves (vanilla DPO/IPO/KTO).
pub const FIXED_REFERENCE: RGBColor = RGBColor(34, 34, 34);
/// A second series next to the run's own colour (KL to the reference next to KL to π_init).
pub const SECONDARY: RGBColor = RGBColor(214, 39, 40);
pub const GRID: RGBColor = RGBColor(225, 225, 225);

/// α's colour; `None` (a fixed reference) is near-black.
pub fn alpha_colour(alpha: Option<f64>) -> RGBColor {
    let Some(alpha) = alpha.filter(|a| a.is_finite() && *a > 0.0) else { return FIXED_REFERENCE };
    ViridisRGB::get_color_normalized(alpha_position(alpha) * VIRIDIS_END, 0.0, 1.0)
}

/// Where α sits on the colour scale, 0 … 1 (clamped).
pub fn alpha_position(alpha: f64) -> f64 {
    let (lo, hi) = (ALPHA_MIN.log10(), ALPHA_MAX.log10());
    ((alpha.log10() - lo) / (hi - lo)).clamp(0.0, 1.0)
}

pub fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// Line patterns by τ's order of magnitude: τ = 1 (or a fixed reference) is solid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dash {
    Solid,
    /// τ in 2 … 10.
    Dotted,
    /// τ in 11 … 100.
    Dashed,
    /// τ above 100.
    LongDashed,
}

impl Dash {
    pub fn for_tau(tau: Option<u64>) -> Self {
        match tau {
            None | Some(0 | 1) => Self::Solid,
            Some(2..=10) => Self::Dotted,
            Some(11..=100) => Self::Dashed,
            Some(_) => Self::LongDashed,
        }
    }

    /// (dash, gap) in pixels; `None` for a solid line.
    pub fn pattern(self) -> Option<(u32, u32)> {
        match self {
            Self::Solid => None,
            Self::Dotted => Some((2, 3)),
            Self::Dashed => Some((7, 4)),
            Self::LongDashed => Some((14, 5)),
        }
    }

    /// The SVG `stroke-dasharray`.
    pub fn dasharray(self) -> Option<String> {
        self.pattern().map(|(on, off)| format!("{on} {off}"))
    }

    /// What the legend says about this pattern.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Solid => "τ = 1",
            Self::Dotted => "τ 2–10",
            Self::Dashed => "τ 11–100",
            Self::LongDashed => "τ > 100",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_its_colour_whatever_else_is_on_the_chart() {
        assert_eq!(alpha_colour(Some(0.1)), alpha_colour(Some(0.1)));
        assert_ne!(alpha_colour(Some(0.01)), alpha_colour(Some(0.6)));
        assert_eq!(alpha_colour(None), FIXED_REFERENCE);
        assert_eq!(alpha_colour(Some(0.001)), alpha_colour(Some(0.01)), "below the scale clamps");
        assert!((alpha_position(0.1) - 0.5).abs() < 1e-12, "log scale: 0.1 is half way from 0.01 to 1");
    }

    #[test]
    fn dash_patterns_follow_the_order_of_magnitude_of_tau() {
        assert_eq!(Dash::for_tau(Some(1)), Dash::Solid);
        assert_eq!(Dash::for_tau(None), Dash::Solid);
        assert_eq!(Dash::for_tau(Some(10)), Dash::Dotted);
        assert_eq!(Dash::for_tau(Some(100)), Dash::Dashed);
        assert_eq!(Dash::for_tau(Some(1000)), Dash::LongDashed);
        assert_eq!(Dash::Dashed.dasharray().as_deref(), Some("7 4"));
    }
}
