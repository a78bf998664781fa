//! Server-side downsampling of curves that keeps what a person must not miss.
//!
//! A chart is at most a few thousand pixels wide, so a million-point curve is cut into
//! buckets and each bucket keeps its first, lowest, highest and last point (the "M4" rule):
//! drawn as a line at one bucket per pixel column this is exactly the full curve's picture,
//! so a loss spike or a single NaN step is never dropped, unlike random or every-n-th
//! sampling. LTTB (largest-triangle-three-buckets) is offered as the smoother alternative.

/// How to reduce a curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// First, min, max and last of each bucket (keeps every extreme).
    MinMax,
    /// Largest triangle three buckets (keeps the shape, one point per bucket).
    Lttb,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minmax" | "m4" => Ok(Method::MinMax),
            "lttb" => Ok(Method::Lttb),
            other => Err(format!(
                "unknown downsampling method {other:?} (minmax or lttb)"
            )),
        }
    }
}

/// Indices of the points to keep from a curve of `values` (x is the index order), at most
/// `target` of them (never fewer than 4 unless the curve is shorter). Ascending, no repeats.
pub fn keep(values: &[f64], xs: &[f64], target: usize, method: Method) -> Vec<usize> {
    let n = values.len();
    let target = target.max(4);
    if n <= target {
        return (0..n).collect();
    }
    match method {
        Method::MinMax => minmax(values, target),
        Method::Lttb => lttb(values, xs, target),
    }
}

/// Points per bucket of a chunk's stored overview.
pub const OVERVIEW_BUCKET: usize = 64;
/// Chunks shorter than this store no overview (reading them whole is as cheap).
pub const OVERVIEW_MIN: usize = 4 * OVERVIEW_BUCKET;

/// The overview stored with a chunk of points: the indices that first/min/max/last buckets
/// of [`OVERVIEW_BUCKET`] points keep (about 1/16 of them), or `None` for a short chunk.
pub fn overview(values: &[f64]) -> Option<Vec<usize>> {
    if values.len() < OVERVIEW_MIN {
        return None;
    }
    Some(minmax_buckets(
        values,
        values.len().div_ceil(OVERVIEW_BUCKET),
    ))
}

/// Whether `total` points reduced to `target` may be computed from chunk overviews: every
/// output bucket then spans at least two overview buckets, and since the overviews hold each
/// of their buckets' extremes, so does the result.
pub fn overview_suffices(total: usize, target: usize) -> bool {
    let buckets = (target / 5).max(1);
    total / buckets >= 2 * OVERVIEW_BUCKET
}

/// First, min, max, last per bucket; non-finite values are kept (each bucket's first one)
/// so that a divergence shows as a gap, never disappears.
fn minmax(values: &[f64], target: usize) -> Vec<usize> {
    // Up to five picks a bucket (first, min, max, first non-finite, last).
    minmax_buckets(values, (target / 5).max(1))
}

fn minmax_buckets(values: &[f64], buckets: usize) -> Vec<usize> {
    let n = values.len();
    let mut out = Vec::with_capacity(buckets * 4 + 1);
    for b in 0..buckets {
        let lo = b * n / buckets;
        let hi = ((b + 1) * n / buckets).min(n);
        if lo >= hi {
            continue;
        }
        let (mut imin, mut imax, mut bad) = (usize::MAX, usize::MAX, usize::MAX);
        for (i, v) in values.iter().enumerate().take(hi).skip(lo) {
            if !v.is_finite() {
                if bad == usize::MAX {
                    bad = i;
                }
                continue;
            }
            if imin == usize::MAX || *v < values[imin] {
                imin = i;
            }
            if imax == usize::MAX || *v > values[imax] {
                imax = i;
            }
        }
        let mut picks = [lo, imin, imax, bad, hi - 1];
        picks.sort_unstable();
        for p in picks {
            if p != usize::MAX && out.last() != Some(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Largest-triangle-three-buckets; the first and last points are always kept. A bucket
/// holding a non-finite value keeps that point instead of its triangle pick.
// Indexing reads `values` and `xs` at the same index; iterators would obscure that.
#[allow(clippy::needless_range_loop)]
fn lttb(values: &[f64], xs: &[f64], target: usize) -> Vec<usize> {
    let n = values.len();
    let x = |i: usize| xs.get(i).copied().unwrap_or(i as f64);
    let mut out = Vec::with_capacity(target);
    out.push(0);
    let inner = target - 2;
    let width = (n - 2) as f64 / inner as f64;
    let mut a = 0usize;
    for b in 0..inner {
        let lo = 1 + (b as f64 * width) as usize;
        let hi = (1 + ((b + 1) as f64 * width) as usize).min(n - 1);
        // The average of the next bucket (or the last point) is the triangle's third corner.
        let (nlo, nhi) = (hi, (1 + ((b + 2) as f64 * width) as usize).min(n - 1));
        let (mut cx, mut cy, mut cn) = (0.0, 0.0, 0usize);
        for i in nlo..nhi.max(nlo + 1).min(n) {
            if values[i].is_finite() {
                cx += x(i);
                cy += values[i];
                cn += 1;
            }
        }
        if cn == 0 {
            cx = x(n - 1);
            cy = if values[n - 1].is_finite() {
                values[n - 1]
            } else {
                0.0
            };
        } else {
            cx /= cn as f64;
            cy /= cn as f64;
        }
        let (ax, ay) = (x(a), if values[a].is_finite() { values[a] } else { cy });
        let mut best = usize::MAX;
        let mut best_area = -1.0;
        for i in lo..hi.max(lo + 1).min(n - 1) {
            if !values[i].is_finite() {
                best = i;
                break;
            }
            let area = ((ax - cx) * (values[i] - ay) - (ax - x(i)) * (cy - ay)).abs();
            if area > best_area {
                best_area = area;
                best = i;
            }
        }
        if best != usize::MAX && out.last() != Some(&best) {
            out.push(best);
            a = best;
        }
    }
    if out.last() != Some(&(n - 1)) {
        out.push(n - 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| 1.0 / (1.0 + i as f64 * 1e-3) + ((i * 7919) % 101) as f64 * 1e-4)
            .collect()
    }

    #[test]
    fn short_curves_are_untouched() {
        let v = noisy(10);
        assert_eq!(
            keep(&v, &[], 100, Method::MinMax),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(
            keep(&v, &[], 100, Method::Lttb),
            (0..10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn minmax_keeps_a_single_spike_and_the_global_extremes() {
        let mut v = noisy(1_000_000);
        v[654_321] = 1e6;
        v[123_457] = -5.0;
        let k = keep(&v, &[], 2000, Method::MinMax);
        assert!(k.len() <= 2000, "{} points", k.len());
        assert!(k.contains(&654_321) && k.contains(&123_457));
        assert!(k.contains(&0) && k.contains(&999_999));
        assert!(k.windows(2).all(|w| w[0] < w[1]), "ascending, no repeats");
        // Every bucket's min and max survive: the kept points' range equals the curve's.
        let kept: Vec<f64> = k.iter().map(|&i| v[i]).collect();
        let max = kept.iter().cloned().fold(f64::MIN, f64::max);
        let min = kept.iter().cloned().fold(f64::MAX, f64::min);
        assert_eq!((min, max), (-5.0, 1e6));
    }

    #[test]
    fn non_finite_points_survive_both_methods() {
        let mut v = noisy(100_000);
        v[50_001] = f64::NAN;
        v[70_000] = f64::INFINITY;
        for m in [Method::MinMax, Method::Lttb] {
            let k = keep(&v, &[], 500, m);
            assert!(k.contains(&50_001), "{m:?} dropped the NaN");
            assert!(k.contains(&70_000), "{m:?} dropped the inf");
        }
    }

    #[test]
    fn lttb_keeps_a_spike_and_respects_the_target() {
        let mut v = noisy(200_000);
        v[100_000] = 50.0;
        let xs: Vec<f64> = (0..v.len()).map(|i| i as f64).collect();
        let k = keep(&v, &xs, 1000, Method::Lttb);
        assert!(k.len() <= 1000);
        assert!(k.contains(&100_000));
        assert_eq!((k[0], *k.last().unwrap()), (0, 199_999));
        assert!(k.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn overviews_keep_every_bucket_extreme_and_a_sixteenth_of_the_points() {
        assert!(overview(&noisy(OVERVIEW_MIN - 1)).is_none());
        let mut v = noisy(10_000);
        v[777] = 9.0;
        v[7777] = -9.0;
        let k = overview(&v).unwrap();
        assert!(k.len() <= 10_000 / 16 + 5 * 2, "{} kept", k.len());
        assert!(k.contains(&777) && k.contains(&7777));
        for b in 0..10_000usize.div_ceil(OVERVIEW_BUCKET) {
            let lo = b * 10_000 / 10_000usize.div_ceil(OVERVIEW_BUCKET);
            let hi = (b + 1) * 10_000 / 10_000usize.div_ceil(OVERVIEW_BUCKET);
            let max = (lo..hi).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
            assert!(k.contains(&max), "bucket {b} lost its max");
        }
        assert!(overview_suffices(1_000_000, 2000));
        assert!(!overview_suffices(20_000, 2000));
    }

    #[test]
    fn methods_parse_with_a_clear_error() {
        assert_eq!("lttb".parse::<Method>().unwrap(), Method::Lttb);
        assert!("random"
            .parse::<Method>()
            .unwrap_err()
            .contains("minmax or lttb"));
    }
}
