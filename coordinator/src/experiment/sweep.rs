//! Sweeps: a grid over lists, or `search: {random: N, seed: S}` drawing N points (lists
//! uniformly, `uniform: [a, b]`, `log_uniform: [a, b]`, `int_uniform: [a, b]`). Every error
//! points at the parameter (or the `search:` key) it is about.

use super::expand::Override;
use super::file::Ctx;
use super::*;
use plume_jobs::yaml::{Location, Spanned};

/// The sweep as written: parameter -> value list or distribution.
pub(super) type SweepFile = Spanned<IndexMap<Spanned<String>, Spanned<Value>>>;

/// How the points are chosen.
enum Search {
    /// Every combination of the lists.
    Grid,
    /// `n` seeded draws.
    Random { n: u64, seed: u64 },
}

/// One parameter's values.
enum Dist {
    List(Vec<Value>),
    Uniform(f64, f64),
    LogUniform(f64, f64),
    IntUniform(i64, i64),
}

/// One swept parameter.
struct Param<'a> {
    path: &'a str,
    at: Location,
    dist: Dist,
}

/// Every sweep point, each a list of overrides in the order the parameters are written.
pub(super) fn points(sweep: &SweepFile, ctx: &Ctx) -> Result<Vec<Vec<Override>>, ExperimentError> {
    let mut search = Search::Grid;
    let mut params = Vec::new();
    for (k, v) in &sweep.value {
        let located = |m: String| ctx.err(&k.referenced, m);
        if k.value == "search" {
            search = read_search(&v.value).map_err(located)?;
        } else {
            let dist = read_dist(&k.value, &v.value).map_err(located)?;
            params.push(Param {
                path: &k.value,
                at: k.referenced,
                dist,
            });
        }
    }
    if params.is_empty() {
        return Err(ctx.err(&sweep.referenced, "the sweep has no parameters".into()));
    }
    match search {
        Search::Random { n, seed } => Ok(draw(&params, n, seed)),
        Search::Grid => grid(&params, ctx),
    }
}

fn read_search(v: &Value) -> Result<Search, String> {
    let m = v
        .as_object()
        .ok_or("sweep.search must be {random: N, seed: S} or {grid: true}")?;
    let (mut n, mut seed) = (None, 0);
    for (sk, sv) in m {
        match sk.as_str() {
            "random" => {
                n = Some(
                    sv.as_u64()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or("sweep.search.random must be a count from 1 to 1000")?,
                )
            }
            "seed" => seed = sv.as_u64().ok_or("sweep.search.seed must be an integer")?,
            "grid" => {}
            _ => return Err("sweep.search accepts random, seed or grid".into()),
        }
    }
    match n {
        Some(n) => Ok(Search::Random { n, seed }),
        None if m.contains_key("seed") => Err("sweep.search needs random: N".into()),
        None => Ok(Search::Grid),
    }
}

fn read_dist(k: &str, v: &Value) -> Result<Dist, String> {
    match v {
        Value::Array(s) if s.is_empty() => Err(format!("sweep.{k} lists no values")),
        Value::Array(s) => Ok(Dist::List(s.clone())),
        Value::Object(m) if m.len() == 1 => {
            let (dk, dv) = m.iter().next().expect("one entry");
            let (lo, hi) = dv
                .as_array()
                .filter(|s| s.len() == 2)
                .and_then(|s| Some((s[0].as_f64()?, s[1].as_f64()?)))
                .ok_or(format!("sweep.{k}: expected [low, high]"))?;
            if lo.is_nan() || hi.is_nan() || lo >= hi {
                return Err(format!("sweep.{k}: low must be below high"));
            }
            match dk.as_str() {
                "uniform" => Ok(Dist::Uniform(lo, hi)),
                "log_uniform" if lo > 0.0 => Ok(Dist::LogUniform(lo, hi)),
                "log_uniform" => Err(format!("sweep.{k}: log_uniform needs positive bounds")),
                "int_uniform" => Ok(Dist::IntUniform(lo as i64, hi as i64)),
                _ => Err(format!(
                    "sweep.{k}: expected a list of values or one of uniform, log_uniform, int_uniform"
                )),
            }
        }
        _ => Err(format!(
            "sweep.{k}: expected a list of values or {{log_uniform: [low, high]}}"
        )),
    }
}

/// `n` points drawn with a seeded generator, so a file always expands to the same runs.
fn draw(params: &[Param], n: u64, seed: u64) -> Vec<Vec<Override>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            params
                .iter()
                .map(|p| {
                    let value = match &p.dist {
                        Dist::List(l) => l[rng.random_range(0..l.len())].clone(),
                        Dist::Uniform(a, b) => Value::from(rng.random_range(*a..*b)),
                        Dist::LogUniform(a, b) => {
                            Value::from(rng.random_range(a.ln()..b.ln()).exp())
                        }
                        Dist::IntUniform(a, b) => Value::from(rng.random_range(*a..=*b)),
                    };
                    Override {
                        path: p.path.to_string(),
                        value,
                        at: p.at,
                    }
                })
                .collect()
        })
        .collect()
}

/// Every combination of the lists (a distribution needs `search: {random: N}`).
fn grid(params: &[Param], ctx: &Ctx) -> Result<Vec<Vec<Override>>, ExperimentError> {
    let mut points: Vec<Vec<Override>> = vec![Vec::new()];
    for p in params {
        let Dist::List(values) = &p.dist else {
            return Err(ctx.err(
                &p.at,
                format!(
                    "sweep.{} is a distribution; add search: {{random: N}} to draw from it",
                    p.path
                ),
            ));
        };
        points = points
            .into_iter()
            .flat_map(|point| {
                values.iter().map(move |v| {
                    let mut point = point.clone();
                    point.push(Override {
                        path: p.path.to_string(),
                        value: v.clone(),
                        at: p.at,
                    });
                    point
                })
            })
            .collect();
        if points.len() > MAX_RUNS {
            return Err(ctx.err(
                &p.at,
                format!("the sweep grid has more than {MAX_RUNS} points"),
            ));
        }
    }
    Ok(points)
}
