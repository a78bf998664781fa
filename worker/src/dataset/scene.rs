//! Scene codes: everything the renderer needs to draw one synthetic bird (its attributes and
//! its pose), as a fixed-length vector a network can read, and as an exact line of text the
//! dataset stores beside its images (`plume_scenes.txt`, a Plume extension of the CUB layout).
//!
//! A teacher-trained generator maps a scene code to w, so its styles are exact: the style of
//! dataset image i is mapping(code of image i), with no inversion.
//!
//! Vector layout, version [`SCENE_CODE_VERSION`] (bump it with any change here or in the
//! renderer's pose):
//!
//! | offset | width | what |
//! |---|---|---|
//! | 0, 15, 30, 45 | 15 each | one-hot breast, wing, crown, upperparts colour (`COLOURS`) |
//! | 60 | 3 | one-hot bill length (`BILL_LENGTHS`) |
//! | 63 | 3 | one-hot size (`SIZES`) |
//! | 66 | 4 | one-hot background (`BACKGROUNDS`) |
//! | 70 | 22 | pose: facing (±1), centre x, centre y, tilt, scale jitter, 15 colour jitters, sin and cos of the background phase, each scaled to about [-1, 1] |

use super::render::{bird_for, render, BirdAttributes, Pose, Rendered};
use super::vocab::Group;
use super::DatasetError;
use tch::{Kind, Tensor};

/// Version of the vector layout and of the text form.
pub const SCENE_CODE_VERSION: u32 = 1;

/// Width of the pose part of the vector.
pub const POSE_DIM: usize = 22;

/// The name of the scenes file in a synthetic dataset's directory.
pub const SCENES_FILE: &str = "plume_scenes.txt";

/// Offset and width of each attribute group's one-hot block, in `Group::ALL` order, then the
/// pose block's.
pub fn layout() -> ([(usize, usize); 7], (usize, usize)) {
    let mut blocks = [(0, 0); 7];
    let mut offset = 0;
    for (g, group) in Group::ALL.iter().enumerate() {
        let n = group.values().len();
        blocks[g] = (offset, n);
        offset += n;
    }
    (blocks, (offset, POSE_DIM))
}

/// Length of a scene code vector.
pub fn code_dim() -> usize {
    let (_, (offset, width)) = layout();
    offset + width
}

/// One scene: what `render` draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scene {
    /// The attributes (captioned, labelled).
    pub attrs: BirdAttributes,
    /// Everything else.
    pub pose: Pose,
}

/// Independent streams of scenes, so that the scenes a teacher trains on, the held-out scenes
/// it is scored on and the prior samples drawn for metrics never coincide with each other or
/// with a dataset (a dataset draws with its seed as the key; these hash the seed with a tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SceneStream {
    /// Fresh scenes for every teacher step.
    Training,
    /// Scenes a teacher-trained generator is scored on.
    HeldOut,
    /// The renderer's prior, for a generator's samples.
    Prior,
}

impl SceneStream {
    fn key(self, seed: u64) -> u64 {
        let tag: u64 = match self {
            SceneStream::Training => 0x7EAC_4E55_0001,
            SceneStream::HeldOut => 0x4E1D_0075_0002,
            SceneStream::Prior => 0x9210_4000_0003,
        };
        // splitmix64 of (seed, tag): far from any small seed a user gives a dataset.
        let mut z = seed.wrapping_add(tag.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Scene `index` of this stream under `seed`.
    pub fn scene(self, seed: u64, index: u64) -> Scene {
        Scene::of(self.key(seed), index)
    }

    /// Scenes `first..first + n`.
    pub fn scenes(self, seed: u64, first: u64, n: usize) -> Vec<Scene> {
        (0..n as u64).map(|i| self.scene(seed, first + i)).collect()
    }
}

impl Scene {
    /// Image `index` of a synthetic dataset drawn with `seed` (as `write_dataset` draws it).
    pub fn of(seed: u64, index: u64) -> Scene {
        let (attrs, pose, _) = bird_for(seed, index);
        Scene { attrs, pose }
    }

    /// The renderer's picture of the scene.
    pub fn render(&self, resolution: u32) -> Rendered {
        render(&self.attrs, &self.pose, resolution)
    }

    /// The network's view of the scene (see the module's table).
    pub fn vector(&self) -> Vec<f32> {
        let (blocks, _) = layout();
        let mut v = vec![0f32; code_dim()];
        for ((offset, _), value) in blocks.iter().zip(self.attrs.values()) {
            v[offset + value] = 1.0;
        }
        let p = &self.pose;
        let mut pose = vec![
            if p.facing_left { -1.0 } else { 1.0 },
            p.centre.0 / 0.03,
            (p.centre.1 - 0.54) / 0.04,
            p.tilt / 0.15,
            (p.scale_jitter - 1.0) / 0.05,
        ];
        pose.extend(p.colour_jitter.iter().flatten().map(|&j| j as f32 / 10.0));
        pose.push(p.background_phase.sin());
        pose.push(p.background_phase.cos());
        let (_, (offset, width)) = layout();
        v[offset..offset + width].copy_from_slice(&pose);
        v
    }

    /// The exact text form: the 7 attribute indices, then the pose's raw numbers (floats in
    /// Rust's shortest round-tripping form, so parsing gives the same bits back).
    pub fn to_line(&self) -> String {
        let p = &self.pose;
        let mut fields: Vec<String> = self.attrs.values().iter().map(|v| v.to_string()).collect();
        fields.push((p.facing_left as u8).to_string());
        for x in [p.centre.0, p.centre.1, p.tilt, p.scale_jitter] {
            fields.push(x.to_string());
        }
        fields.extend(p.colour_jitter.iter().flatten().map(|j| j.to_string()));
        fields.push(p.background_phase.to_string());
        fields.join(" ")
    }

    /// Parses [`Scene::to_line`]'s form; errors name the 1-based field.
    pub fn parse(text: &str) -> Result<Scene, String> {
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.len() != 7 + 1 + 4 + 15 + 1 {
            return Err(format!("expected 28 fields, got {}", f.len()));
        }
        let int = |i: usize, below: usize| -> Result<usize, String> {
            f[i].parse::<usize>()
                .ok()
                .filter(|&v| v < below)
                .ok_or_else(|| format!("field {}: {:?} is not an index below {below}", i + 1, f[i]))
        };
        let float = |i: usize| -> Result<f32, String> {
            f[i].parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("field {}: {:?} is not a finite number", i + 1, f[i]))
        };
        let sizes: Vec<usize> = Group::ALL.iter().map(|g| g.values().len()).collect();
        let attrs = BirdAttributes {
            breast: int(0, sizes[0])?,
            wing: int(1, sizes[1])?,
            crown: int(2, sizes[2])?,
            upper: int(3, sizes[3])?,
            bill: int(4, sizes[4])?,
            size: int(5, sizes[5])?,
            background: int(6, sizes[6])?,
        };
        let mut colour_jitter = [[0i16; 3]; 5];
        for (k, j) in colour_jitter.iter_mut().flatten().enumerate() {
            *j = f[12 + k]
                .parse::<i16>()
                .ok()
                .filter(|j| j.abs() <= 255)
                .ok_or_else(|| {
                    format!("field {}: {:?} is not a colour jitter", 13 + k, f[12 + k])
                })?;
        }
        let pose = Pose {
            facing_left: int(7, 2)? == 1,
            centre: (float(8)?, float(9)?),
            tilt: float(10)?,
            scale_jitter: float(11)?,
            colour_jitter,
            background_phase: float(27)?,
        };
        Ok(Scene { attrs, pose })
    }
}

/// Scene codes `[N, code_dim]` for `scenes`.
pub fn codes(scenes: &[Scene]) -> Tensor {
    let flat: Vec<f32> = scenes.iter().flat_map(|s| s.vector()).collect();
    Tensor::from_slice(&flat).view([scenes.len() as i64, code_dim() as i64])
}

/// The renders of `scenes`: images `[N, 3, R, R]` in [-1, 1] and part labels `[N, R, R]`
/// (int64), as the dataset loader would read them from the PNGs.
pub fn render_batch(scenes: &[Scene], resolution: u32) -> (Tensor, Tensor) {
    let r = resolution as i64;
    let (mut rgb, mut parts) = (Vec::new(), Vec::new());
    for s in scenes {
        let pic = s.render(resolution);
        rgb.extend_from_slice(&pic.rgb);
        parts.extend_from_slice(&pic.parts);
    }
    let n = scenes.len() as i64;
    let images = Tensor::from_slice(&rgb)
        .view([n, r, r, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        / 127.5
        - 1.0;
    let parts = Tensor::from_slice(&parts)
        .view([n, r, r])
        .to_kind(Kind::Int64);
    (images.contiguous(), parts)
}

/// The attribute values of `scenes` `[N, 7]` (int64), in `Group::ALL` order.
pub fn labels(scenes: &[Scene]) -> Tensor {
    let flat: Vec<i64> = scenes
        .iter()
        .flat_map(|s| s.attrs.values().map(|v| v as i64))
        .collect();
    Tensor::from_slice(&flat).view([scenes.len() as i64, 7])
}

/// Reads a dataset's scenes file: the scene of each image id (1-based, as in `images.txt`).
pub fn read_scenes(dir: &std::path::Path) -> Result<Vec<(u32, Scene)>, DatasetError> {
    let path = dir.join(SCENES_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| DatasetError::io(&path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i == 0 {
            if line != scenes_header() {
                return Err(DatasetError::Parse {
                    path,
                    line: 1,
                    message: format!("expected the header {:?}, got {line:?}", scenes_header()),
                });
            }
            continue;
        }
        let parse_err = |message: String| DatasetError::Parse {
            path: path.clone(),
            line: i + 1,
            message,
        };
        let (id, rest) = line
            .split_once(' ')
            .ok_or_else(|| parse_err("expected '<image id> <scene>'".into()))?;
        let id = id
            .parse::<u32>()
            .map_err(|_| parse_err(format!("{id:?} is not an image id")))?;
        out.push((id, Scene::parse(rest).map_err(parse_err)?));
    }
    Ok(out)
}

/// The header line of a scenes file.
pub fn scenes_header() -> String {
    format!("# scene codes v{SCENE_CODE_VERSION}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_exactly() {
        for i in 0..200 {
            let s = SceneStream::Training.scene(3, i);
            assert_eq!(Scene::parse(&s.to_line()).unwrap(), s);
        }
    }

    #[test]
    fn vector_has_one_value_per_group_and_bounded_pose() {
        let (blocks, (pose_at, pose_w)) = layout();
        for i in 0..200 {
            let v = SceneStream::Prior.scene(1, i).vector();
            for (o, w) in blocks {
                assert_eq!(v[o..o + w].iter().sum::<f32>(), 1.0);
            }
            assert!(v[pose_at..pose_at + pose_w]
                .iter()
                .all(|x| x.abs() <= 1.0001));
        }
    }

    #[test]
    fn streams_differ_from_each_other_and_from_a_dataset() {
        let a = SceneStream::Training.scene(7, 1);
        let b = SceneStream::HeldOut.scene(7, 1);
        let c = Scene::of(7, 1);
        assert!(a != b && a != c && b != c);
    }

    #[test]
    fn bad_lines_are_refused_with_the_field() {
        let good = SceneStream::Training.scene(3, 0).to_line();
        let mut f: Vec<&str> = good.split(' ').collect();
        f[0] = "15";
        assert!(Scene::parse(&f.join(" ")).unwrap_err().contains("field 1"));
        f[0] = "1";
        f[9] = "NaN";
        assert!(Scene::parse(&f.join(" ")).unwrap_err().contains("field 10"));
        assert!(Scene::parse("1 2 3").is_err());
    }
}
