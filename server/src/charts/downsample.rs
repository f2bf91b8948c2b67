//! Fewer points, same shape: what a chart or a JSON answer keeps of a long series.

/// The indices of at most `max` points that keep a series' shape: the first and last, the
/// global minimum and maximum of `value` (the peak of a gold-reward curve), and the minimum and
/// maximum of every bucket in between. In input order. Points whose value is `None` or NaN are
/// only kept as the first or last point.
pub fn keep_indices(len: usize, max: usize, value: impl Fn(usize) -> Option<f64>) -> Vec<usize> {
    if len <= max {
        return (0..len).collect();
    }
    let value = |i: usize| value(i).filter(|v| !v.is_nan());
    let extremes = |range: std::ops::Range<usize>| -> (Option<usize>, Option<usize>) {
        // (index, value) of the lowest and highest value so far.
        let mut lo: Option<(usize, f64)> = None;
        let mut hi: Option<(usize, f64)> = None;
        for i in range {
            let Some(v) = value(i) else { continue };
            if lo.is_none_or(|(_, l)| v < l) {
                lo = Some((i, v));
            }
            if hi.is_none_or(|(_, h)| v > h) {
                hi = Some((i, v));
            }
        }
        (lo.map(|p| p.0), hi.map(|p| p.0))
    };
    let mut keep = vec![0, len - 1];
    let (lo, hi) = extremes(0..len);
    keep.extend(lo);
    keep.extend(hi);
    // Two points per bucket from what is left of the budget.
    let buckets = (max.saturating_sub(keep.len()) / 2).max(1);
    let interior = len - 2;
    for b in 0..buckets {
        let (start, end) = (1 + b * interior / buckets, 1 + (b + 1) * interior / buckets);
        let (lo, hi) = extremes(start..end);
        keep.extend(lo);
        keep.extend(hi);
    }
    keep.sort_unstable();
    keep.dedup();
    keep
}

/// [`keep_indices`] applied to `points`, by the value `value` reads from each.
pub fn downsample<T: Clone>(points: &[T], max: usize, value: impl Fn(&T) -> Option<f64>) -> Vec<T> {
    keep_indices(points.len(), max, |i| value(&points[i])).into_iter().map(|i| points[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(n: i64) -> Vec<(i64, Option<f64>)> {
        // Rises to a peak at step 7_000, then falls: an overoptimization curve.
        (0..n).map(|s| (s, Some(-((s - 7_000) as f64 / 1_000.0).powi(2) + (s % 7) as f64 * 0.01))).collect()
    }

    #[test]
    fn downsampling_keeps_first_last_min_max_and_peak() {
        let points = curve(20_000);
        let kept = downsample(&points, 200, |p| p.1);
        assert!(kept.len() <= 200, "{} points", kept.len());
        assert_eq!(kept.first(), points.first());
        assert_eq!(kept.last(), points.last());
        let max = points.iter().map(|p| p.1.unwrap()).fold(f64::MIN, f64::max);
        let min = points.iter().map(|p| p.1.unwrap()).fold(f64::MAX, f64::min);
        assert!(kept.iter().any(|p| p.1 == Some(max)));
        assert!(kept.iter().any(|p| p.1 == Some(min)));
        assert!(kept.windows(2).all(|w| w[0].0 < w[1].0), "steps stay in order");
    }

    #[test]
    fn short_series_are_returned_whole() {
        let points = curve(10);
        assert_eq!(downsample(&points, 100, |p| p.1), points);
    }

    #[test]
    fn missing_values_never_count_as_extremes() {
        let mut points = curve(1_000);
        points[500].1 = None;
        points[501].1 = Some(f64::NAN);
        let kept = downsample(&points, 50, |p| p.1);
        assert!(kept.iter().all(|p| p.1.is_some_and(|v| !v.is_nan())));
    }
}
