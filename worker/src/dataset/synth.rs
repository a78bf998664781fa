//! Writes a `synthetic-birds` dataset in the CUB-200-2011 layout (see `mod.rs` for the
//! layout), deterministically from a seed.

use super::render::{bird_for, render, BirdAttributes};
use super::scene::{scenes_header, Scene, SCENES_FILE};
use super::vocab::{
    attribute_names, Group, BACKGROUNDS, BILL_LENGTHS, COLOURS, PARTS, PHRASINGS, SIZES,
};
use super::DatasetError;
use rand::seq::SliceRandom;
use rand::Rng;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

/// Bumped whenever the renderer's output or the files written change, so cached datasets are
/// not reused (4: the scenes file).
pub const RENDERER_VERSION: u32 = 4;

/// Captions per image, as in Reed et al.'s `text_c10`.
pub const CAPTIONS_PER_IMAGE: usize = 10;

/// Resolutions the renderer is tuned for.
pub const RESOLUTIONS: [u32; 3] = [32, 64, 128];

/// How many images, at what size, from which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthSpec {
    /// Number of images.
    pub images: u32,
    /// Side length in pixels: 32, 64 or 128.
    pub resolution: u32,
    /// Everything is a function of this seed.
    pub seed: u64,
}

/// Class of a bird: its shape (size x bill length), which is what a field guide would use.
fn class_index(attrs: &BirdAttributes) -> usize {
    attrs.size * BILL_LENGTHS.len() + attrs.bill
}

/// Class directory names, `001.Small_Short_Billed_Bird` style.
pub fn class_names() -> Vec<String> {
    let mut out = Vec::new();
    for size in SIZES {
        for bill in BILL_LENGTHS {
            let cap = |w: &str| {
                let w = w.split('-').next().unwrap_or(w);
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            };
            out.push(format!(
                "{:03}.{}_{}_Billed_Bird",
                out.len() + 1,
                cap(size.1),
                cap(bill.1)
            ));
        }
    }
    out
}

/// The caption for one phrasing of a bird.
pub fn caption(phrasing: &str, attrs: &BirdAttributes) -> String {
    let text = phrasing
        .replace("{breast}", COLOURS[attrs.breast].0)
        .replace("{wing}", COLOURS[attrs.wing].0)
        .replace("{crown}", COLOURS[attrs.crown].0)
        .replace("{upper}", COLOURS[attrs.upper].0)
        .replace("{bill}", BILL_LENGTHS[attrs.bill].1)
        .replace("{size}", SIZES[attrs.size].1)
        .replace("{bg}", BACKGROUNDS[attrs.background].1);
    // "a olive breast" -> "an olive breast"
    let words: Vec<&str> = text.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        let next_vowel = words
            .get(i + 1)
            .and_then(|n| n.chars().next())
            .is_some_and(|c| "aeiou".contains(c));
        out.push(if *w == "a" && next_vowel { "an" } else { w });
    }
    out.join(" ")
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), DatasetError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| DatasetError::io(dir, e))?;
    }
    fs::write(path, contents).map_err(|e| DatasetError::io(path, e))
}

fn save_png(path: &Path, res: u32, data: Vec<u8>, colour: bool) -> Result<(), DatasetError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| DatasetError::io(dir, e))?;
    }
    let result = if colour {
        image::RgbImage::from_raw(res, res, data)
            .expect("buffer sized by the renderer")
            .save(path)
    } else {
        image::GrayImage::from_raw(res, res, data)
            .expect("buffer sized by the renderer")
            .save(path)
    };
    result.map_err(|e| DatasetError::Image {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Renders `spec.images` birds into `out` (created; must be empty or absent), reporting
/// progress as `(done, total)` every few hundred images.
pub fn write_dataset(
    out: &Path,
    spec: &SynthSpec,
    mut progress: impl FnMut(u32, u32),
) -> Result<(), DatasetError> {
    check_spec(out, spec)?;
    let classes = class_names();
    let mut tables = Tables::default();
    for id in 1..=spec.images {
        write_bird(out, spec, id, &classes, &mut tables)?;
        if id % 250 == 0 || id == spec.images {
            progress(id, spec.images);
        }
    }
    tables.write(out, &classes)?;
    let meta = serde_json::json!({
        "kind": "synthetic-birds",
        "images": spec.images,
        "resolution": spec.resolution,
        "seed": spec.seed,
        "renderer_version": RENDERER_VERSION,
    });
    write(
        &out.join("plume_dataset.json"),
        serde_json::to_vec_pretty(&meta).expect("json"),
    )
}

/// A resolution the renderer draws, a count a disk can hold, and an empty destination.
fn check_spec(out: &Path, spec: &SynthSpec) -> Result<(), DatasetError> {
    if !RESOLUTIONS.contains(&spec.resolution) {
        return Err(DatasetError::Invalid(format!(
            "resolution {} is not one of {:?}",
            spec.resolution, RESOLUTIONS
        )));
    }
    if spec.images == 0 || spec.images > 1_000_000 {
        return Err(DatasetError::Invalid(format!(
            "images must be in 1..=1000000, got {}",
            spec.images
        )));
    }
    if out.exists()
        && fs::read_dir(out)
            .map_err(|e| DatasetError::io(out, e))?
            .next()
            .is_some()
    {
        return Err(DatasetError::Invalid(format!(
            "{} exists and is not empty; refusing to write over it",
            out.display()
        )));
    }
    Ok(())
}

/// Bird `id`: its image, part mask and captions, and its lines in the CUB tables.
fn write_bird(
    out: &Path,
    spec: &SynthSpec,
    id: u32,
    classes: &[String],
    tables: &mut Tables,
) -> Result<(), DatasetError> {
    let (attrs, pose, mut rng) = bird_for(spec.seed, id as u64);
    let class = class_index(&attrs);
    let stem = format!("{}_{:06}", &classes[class][4..], id);
    let rel = format!("{}/{}.png", classes[class], stem);
    let picture = render(&attrs, &pose, spec.resolution);
    let (images, masks) = (out.join("images"), out.join("part_masks"));
    save_png(&images.join(&rel), spec.resolution, picture.rgb, true)?;
    save_png(&masks.join(&rel), spec.resolution, picture.parts, false)?;
    let mut order: Vec<usize> = (0..PHRASINGS.len()).collect();
    order.shuffle(&mut rng);
    let mut captions = String::new();
    for &p in order.iter().take(CAPTIONS_PER_IMAGE) {
        captions.push_str(&caption(PHRASINGS[p], &attrs));
        captions.push('\n');
    }
    let text = out.join("text_c10").join(&classes[class]);
    write(&text.join(format!("{stem}.txt")), captions)?;
    // About a fifth of the images are held out for testing, drawn per image.
    let is_train = rng.random_range(0..5) != 0;
    tables.add(id, &rel, class, is_train, &attrs.values());
    let _ = writeln!(tables.scenes, "{id} {}", Scene { attrs, pose }.to_line());
    Ok(())
}

/// The CUB tables, one line per image, written once every image is.
#[derive(Default)]
struct Tables {
    images: String,
    labels: String,
    split: String,
    attributes: String,
    /// `plume_scenes.txt`: each image's exact scene (see `scene.rs`).
    scenes: String,
}

impl Tables {
    fn add(&mut self, id: u32, rel: &str, class: usize, is_train: bool, values: &[usize]) {
        let _ = writeln!(self.images, "{id} {rel}");
        let _ = writeln!(self.labels, "{id} {}", class + 1);
        let _ = writeln!(self.split, "{id} {}", is_train as u8);
        let mut attr_id = 1;
        for (g, group) in Group::ALL.iter().enumerate() {
            for v in 0..group.values().len() {
                let present = (v == values[g]) as u8;
                let _ = writeln!(self.attributes, "{id} {attr_id} {present} 4 0");
                attr_id += 1;
            }
        }
    }

    /// The tables, and the class, attribute and part name lists.
    fn write(self, out: &Path, classes: &[String]) -> Result<(), DatasetError> {
        write(&out.join("images.txt"), self.images)?;
        write(&out.join("image_class_labels.txt"), self.labels)?;
        write(&out.join("train_test_split.txt"), self.split)?;
        write(
            &out.join(SCENES_FILE),
            format!("{}\n{}", scenes_header(), self.scenes),
        )?;
        let numbered = |names: &mut dyn Iterator<Item = String>, first: usize| -> String {
            names
                .enumerate()
                .map(|(i, n)| format!("{} {n}\n", i + first))
                .collect()
        };
        write(
            &out.join("classes.txt"),
            numbered(&mut classes.iter().cloned(), 1),
        )?;
        let attributes = out.join("attributes");
        let names = numbered(&mut attribute_names().into_iter(), 1);
        write(&attributes.join("attributes.txt"), names)?;
        write(
            &attributes.join("image_attribute_labels.txt"),
            self.attributes,
        )?;
        let parts = numbered(&mut PARTS.iter().map(|p| p.to_string()), 0);
        write(&out.join("part_masks").join("parts.txt"), parts)
    }
}
