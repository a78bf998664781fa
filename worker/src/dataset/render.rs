//! The procedural bird renderer behind the `synthetic-birds` dataset.
//!
//! A bird is a stack of simple shapes (ellipses, triangles, strokes) in normalised
//! coordinates, so one description renders at any resolution. Pixels are supersampled
//! (anti-aliased edges, no staircases for a discriminator to key on), parts are never thinner
//! than 1.5 px, and the same seed gives the same bytes.

use super::vocab::{BILL_LENGTHS, COLOURS, SIZES};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What one synthetic bird looks like: indices into the vocabulary tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BirdAttributes {
    /// Index into `COLOURS`.
    pub breast: usize,
    /// Index into `COLOURS`.
    pub wing: usize,
    /// Index into `COLOURS`.
    pub crown: usize,
    /// Index into `COLOURS` (body, nape, back, tail).
    pub upper: usize,
    /// Index into `BILL_LENGTHS`.
    pub bill: usize,
    /// Index into `SIZES`.
    pub size: usize,
    /// Index into `BACKGROUNDS`.
    pub background: usize,
}

impl BirdAttributes {
    /// Draws every attribute independently and uniformly.
    pub fn sample(rng: &mut impl Rng) -> Self {
        BirdAttributes {
            breast: rng.random_range(0..COLOURS.len()),
            wing: rng.random_range(0..COLOURS.len()),
            crown: rng.random_range(0..COLOURS.len()),
            upper: rng.random_range(0..COLOURS.len()),
            bill: rng.random_range(0..BILL_LENGTHS.len()),
            size: rng.random_range(0..SIZES.len()),
            background: rng.random_range(0..super::vocab::BACKGROUNDS.len()),
        }
    }

    /// The value index of each group, in `Group::ALL` order.
    pub fn values(&self) -> [usize; 7] {
        [
            self.breast,
            self.wing,
            self.crown,
            self.upper,
            self.bill,
            self.size,
            self.background,
        ]
    }
}

/// Pose and colour jitter: everything about a bird that is not an attribute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    /// Drawn mirrored.
    pub facing_left: bool,
    /// Offset of the body's centre (x) and its height (y), in image units.
    pub centre: (f32, f32),
    /// Rotation in radians.
    pub tilt: f32,
    /// Multiplies the size's drawing scale.
    pub scale_jitter: f32,
    /// Per-part RGB offsets: upperparts, breast, wing, crown, bill.
    pub colour_jitter: [[i16; 3]; 5],
    /// Phase of the background's ripples and blotches.
    pub background_phase: f32,
}

impl Pose {
    /// A random pose.
    pub fn sample(rng: &mut impl Rng) -> Self {
        let mut colour_jitter = [[0i16; 3]; 5];
        for part in colour_jitter.iter_mut() {
            for c in part.iter_mut() {
                *c = rng.random_range(-10..=10);
            }
        }
        Pose {
            facing_left: rng.random_bool(0.5),
            // x: the bird spans -0.40..+0.60 (tail to longest bill) around its centre, so
            // the centre sits left of the middle; the size is applied in `layers`.
            centre: (rng.random_range(-0.03..0.03), rng.random_range(0.50..0.58)),
            tilt: rng.random_range(-0.15..0.15),
            scale_jitter: rng.random_range(0.95..1.05),
            colour_jitter,
            background_phase: rng.random_range(0.0..std::f32::consts::TAU),
        }
    }
}

/// A rendered bird: RGB pixels and one part label (index into `PARTS`) per pixel.
pub struct Rendered {
    /// Side length in pixels.
    pub resolution: u32,
    /// Row-major RGB, 3 bytes per pixel.
    pub rgb: Vec<u8>,
    /// Row-major part labels.
    pub parts: Vec<u8>,
}

enum Shape {
    /// Centre, radii, rotation.
    Ellipse {
        c: (f32, f32),
        r: (f32, f32),
        angle: f32,
    },
    Triangle([(f32, f32); 3]),
    /// A thick line segment.
    Stroke {
        a: (f32, f32),
        b: (f32, f32),
        width: f32,
    },
}

impl Shape {
    fn contains(&self, p: (f32, f32)) -> bool {
        match *self {
            Shape::Ellipse { c, r, angle } => {
                let (s, co) = angle.sin_cos();
                let (dx, dy) = (p.0 - c.0, p.1 - c.1);
                let (x, y) = (dx * co + dy * s, -dx * s + dy * co);
                (x / r.0).powi(2) + (y / r.1).powi(2) <= 1.0
            }
            Shape::Triangle([a, b, c]) => {
                let cross = |o: (f32, f32), u: (f32, f32), q: (f32, f32)| {
                    (u.0 - o.0) * (q.1 - o.1) - (u.1 - o.1) * (q.0 - o.0)
                };
                let (d1, d2, d3) = (cross(a, b, p), cross(b, c, p), cross(c, a, p));
                let neg = d1 < 0.0 || d2 < 0.0 || d3 < 0.0;
                let pos = d1 > 0.0 || d2 > 0.0 || d3 > 0.0;
                !(neg && pos)
            }
            Shape::Stroke { a, b, width } => {
                let (vx, vy) = (b.0 - a.0, b.1 - a.1);
                let len2 = vx * vx + vy * vy;
                let t = (((p.0 - a.0) * vx + (p.1 - a.1) * vy) / len2).clamp(0.0, 1.0);
                let (qx, qy) = (a.0 + t * vx - p.0, a.1 + t * vy - p.1);
                qx * qx + qy * qy <= width * width / 4.0
            }
        }
    }
}

/// One layer of the drawing: a shape, optionally clipped to another, painted with a part
/// label and a colour.
struct Layer {
    shape: Shape,
    clip: Option<Shape>,
    part: u8,
    colour: [u8; 3],
}

impl Layer {
    /// `shape` filled with `colour`, labelled `part` in the mask.
    fn new(shape: Shape, part: u8, colour: [u8; 3]) -> Layer {
        Layer {
            shape,
            clip: None,
            part,
            colour,
        }
    }

    /// Drawn only inside `clip`.
    fn clipped_to(self, clip: Shape) -> Layer {
        Layer {
            clip: Some(clip),
            ..self
        }
    }
}

fn jittered(colour: [u8; 3], jitter: [i16; 3]) -> [u8; 3] {
    let mut out = [0u8; 3];
    for i in 0..3 {
        out[i] = (colour[i] as i16 + jitter[i]).clamp(0, 255) as u8;
    }
    out
}

fn background_colour(kind: usize, u: f32, v: f32, phase: f32) -> [u8; 3] {
    let mix = |a: [f32; 3], b: [f32; 3], t: f32| -> [u8; 3] {
        let t = t.clamp(0.0, 1.0);
        [0, 1, 2].map(|i| (a[i] + (b[i] - a[i]) * t).round() as u8)
    };
    match kind {
        // sky: a vertical gradient
        0 => mix([120.0, 170.0, 230.0], [205.0, 225.0, 245.0], v),
        // water: horizontal ripples
        1 => {
            let ripple = (v * 28.0 + phase + (u * 6.0).sin()).sin() * 0.5 + 0.5;
            mix([30.0, 80.0, 120.0], [70.0, 130.0, 160.0], ripple)
        }
        // foliage: blotches of two greens
        2 => {
            let blotch = ((u * 11.0 + phase).sin() * (v * 9.0 - phase).cos()) * 0.5 + 0.5;
            mix([30.0, 70.0, 25.0], [90.0, 135.0, 60.0], blotch)
        }
        // ground: sandy, darker towards the bottom
        _ => mix([200.0, 180.0, 140.0], [140.0, 110.0, 75.0], v),
    }
}

fn layers(attrs: &BirdAttributes, pose: &Pose) -> Vec<Layer> {
    let s = SIZES[attrs.size].2 * pose.scale_jitter;
    let (cx, cy) = (0.5 - 0.1 * s + pose.centre.0, pose.centre.1);
    let tilt = pose.tilt;
    // Everything is laid out facing right around (cx, cy), then rotated by `tilt`.
    let place = |dx: f32, dy: f32| -> (f32, f32) {
        let (sn, cs) = tilt.sin_cos();
        (cx + (dx * cs - dy * sn) * s, cy + (dx * sn + dy * cs) * s)
    };
    let colour = |idx: usize, j: usize| jittered(COLOURS[idx].1, pose.colour_jitter[j]);
    let upper = colour(attrs.upper, 0);
    let head_c = place(0.22, -0.14);
    let head_r = 0.10 * s;
    let bill_len = BILL_LENGTHS[attrs.bill].2;
    let ellipse = |c: (f32, f32), r: (f32, f32), angle: f32| Shape::Ellipse { c, r, angle };
    let leg = |x0: f32, x1: f32| Shape::Stroke {
        a: place(x0, 0.10),
        b: place(x1, 0.29),
        width: 0.03 * s,
    };
    let body = || ellipse(place(0.0, 0.0), (0.24 * s, 0.155 * s), tilt);
    let head = || ellipse(head_c, (head_r, head_r), 0.0);
    let bill = Shape::Triangle([
        (head_c.0 + 0.075 * s, head_c.1 - 0.04 * s),
        (head_c.0 + 0.075 * s, head_c.1 + 0.035 * s),
        (head_c.0 + (0.08 + bill_len) * s, head_c.1 + 0.008 * s),
    ]);
    let tail = Shape::Triangle([place(-0.16, -0.03), place(-0.40, -0.10), place(-0.38, 0.06)]);
    let breast = ellipse(place(0.09, 0.06), (0.155 * s, 0.11 * s), tilt);
    let wing = ellipse(place(-0.05, -0.01), (0.17 * s, 0.085 * s), tilt - 0.25);
    let crown = ellipse(
        (head_c.0, head_c.1 - 0.045 * s),
        (head_r * 1.05, 0.07 * s),
        0.0,
    );
    let eye = ellipse(
        (head_c.0 + 0.04 * s, head_c.1 - 0.005 * s),
        (0.025 * s, 0.025 * s),
        0.0,
    );
    // Painter's order: what is drawn later covers what is drawn earlier.
    vec![
        Layer::new(tail, 7, upper),
        Layer::new(leg(-0.05, -0.07), 9, [90, 80, 70]),
        Layer::new(leg(0.05, 0.05), 9, [90, 80, 70]),
        Layer::new(body(), 1, upper),
        Layer::new(breast, 2, colour(attrs.breast, 1)).clipped_to(body()),
        Layer::new(wing, 3, colour(attrs.wing, 2)),
        Layer::new(head(), 5, upper),
        Layer::new(crown, 4, colour(attrs.crown, 3)).clipped_to(head()),
        Layer::new(bill, 6, jittered([60, 55, 50], pose.colour_jitter[4])),
        Layer::new(eye, 8, [10, 10, 10]),
    ]
}

/// Samples per pixel side: every pixel averages a 4 x 4 grid of sub-pixel samples.
pub const SUPERSAMPLE: u32 = 4;

/// The thinnest a part may be drawn, in pixels: thinner parts (legs, the eye at 32 px) are
/// widened to this, so that every part is something a smooth generator can draw.
const MIN_PART_PX: f32 = 1.5;

/// Renders a bird at `resolution` pixels square, anti-aliased: a pixel's colour is the mean of
/// `SUPERSAMPLE`² samples (each the topmost shape's colour at that point) and its part label
/// the label most of those samples hit (ties go to the topmost part). Deterministic: no
/// randomness and no floating-point reductions whose order could vary.
pub fn render(attrs: &BirdAttributes, pose: &Pose, resolution: u32) -> Rendered {
    let mut layers = layers(attrs, pose);
    let min_width = MIN_PART_PX / resolution as f32;
    for layer in &mut layers {
        match (&mut layer.shape, layer.part) {
            // The eye: a disc at least MIN_PART_PX across.
            (Shape::Ellipse { r, .. }, 8) => {
                r.0 = r.0.max(min_width / 2.0);
                r.1 = r.1.max(min_width / 2.0);
            }
            // Legs.
            (Shape::Stroke { width, .. }, _) => *width = width.max(min_width),
            _ => {}
        }
    }
    let n = resolution as usize;
    let ss = SUPERSAMPLE as usize;
    let mut rgb = vec![0u8; n * n * 3];
    let mut parts = vec![0u8; n * n];
    for y in 0..n {
        for x in 0..n {
            let mut sum = [0u32; 3];
            let mut votes = [0u32; 16];
            for sy in 0..ss {
                for sx in 0..ss {
                    let mut u = (x as f32 + (sx as f32 + 0.5) / ss as f32) / resolution as f32;
                    let v = (y as f32 + (sy as f32 + 0.5) / ss as f32) / resolution as f32;
                    let mut colour =
                        background_colour(attrs.background, u, v, pose.background_phase);
                    if pose.facing_left {
                        u = 1.0 - u;
                    }
                    let mut part = 0u8;
                    for layer in &layers {
                        if layer.shape.contains((u, v))
                            && layer.clip.as_ref().is_none_or(|c| c.contains((u, v)))
                        {
                            part = layer.part;
                            colour = layer.colour;
                        }
                    }
                    for (s, c) in sum.iter_mut().zip(colour) {
                        *s += c as u32;
                    }
                    votes[part as usize] += 1;
                }
            }
            let i = y * n + x;
            let count = (ss * ss) as u32;
            for c in 0..3 {
                rgb[i * 3 + c] = ((sum[c] + count / 2) / count) as u8;
            }
            // Most votes; a tie goes to the part drawn later (on top).
            let mut best = 0u8;
            for l in layers.iter().map(|layer| layer.part) {
                if votes[l as usize] > 0 && votes[l as usize] >= votes[best as usize] {
                    best = l;
                }
            }
            parts[i] = best;
        }
    }
    Rendered {
        resolution,
        rgb,
        parts,
    }
}

/// The attributes and pose of image `index` of a dataset drawn with `seed`: each image has
/// its own RNG stream, so any image can be re-rendered alone.
pub fn bird_for(seed: u64, index: u64) -> (BirdAttributes, Pose, ChaCha8Rng) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let attrs = BirdAttributes::sample(&mut rng);
    let pose = Pose::sample(&mut rng);
    (attrs, pose, rng)
}
