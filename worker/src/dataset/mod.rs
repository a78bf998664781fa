//! Datasets in the CUB-200-2011 layout, and the `synthetic-birds` renderer that writes it.
//!
//! One loader reads both the bundled synthetic birds and the real CUB-200-2011:
//!
//! ```text
//! images.txt                       <image_id> <class_dir>/<file>
//! images/<class_dir>/<file>
//! classes.txt                      <class_id> <class_dir>
//! image_class_labels.txt           <image_id> <class_id>
//! train_test_split.txt             <image_id> <1 = train, 0 = test>
//! attributes/attributes.txt        <attribute_id> <group>::<value>
//! attributes/image_attribute_labels.txt
//!                                  <image_id> <attribute_id> <is_present> <certainty> <time>
//! text_c10/<class_dir>/<stem>.txt  one caption per line (Reed et al.)
//! part_masks/parts.txt             <label> <part name>      (synthetic birds: exact parts)
//! part_masks/<class_dir>/<stem>.png  8-bit label per pixel
//! segmentations/<class_dir>/<stem>.png  (real CUB: bird vs background, used if no part_masks)
//! ```
//!
//! (CUB's own `parts/` folder holds keypoints, not masks, hence `part_masks/`.)

pub mod cache;
mod layout;
pub mod render;
pub mod scene;
pub mod sheet;
pub mod synth;
pub mod vocab;

pub use cache::{data_cache_dir, OpenDataset};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Everything that can go wrong reading or writing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line of an index file does not have the expected form.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was expected.
        message: String,
    },
    /// An image or mask could not be decoded or written.
    #[error("{path}: {message}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        message: String,
    },
    /// A request that cannot be satisfied (bad resolution, non-empty output directory, ...).
    #[error("{0}")]
    Invalid(String),
}

impl DatasetError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        DatasetError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// One attribute group (`has_wing_color`) and its values, with their 0-based attribute indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeGroup {
    /// The group name before `::`.
    pub name: String,
    /// The values after `::`.
    pub values: Vec<String>,
}

/// One image of the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// The dataset's image id (1-based in CUB).
    pub id: u32,
    /// `<class_dir>/<file>` relative to `images/`.
    pub rel_path: String,
    /// 0-based class index.
    pub class: usize,
    /// From `train_test_split.txt`.
    pub is_train: bool,
}

impl ImageEntry {
    /// `<class_dir>/<file stem>`: the key of captions and masks.
    pub fn stem(&self) -> &str {
        self.rel_path
            .rsplit_once('.')
            .map(|(s, _)| s)
            .unwrap_or(&self.rel_path)
    }
}

/// Which per-pixel labels a dataset has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskKind {
    /// Exact part labels in `part_masks/` with these part names (label = index).
    Parts(Vec<String>),
    /// CUB's `segmentations/`: bird (1) vs background (0).
    Segmentation,
    /// No masks.
    None,
}

/// A dataset directory in the CUB layout, with every index file parsed.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The directory.
    pub root: PathBuf,
    /// Class directory names; index = class id - 1.
    pub classes: Vec<String>,
    /// Images in `images.txt` order.
    pub images: Vec<ImageEntry>,
    /// Attribute groups in file order.
    pub groups: Vec<AttributeGroup>,
    /// Per image, per group: the index of the present value, or -1 if none is marked.
    pub labels: Vec<Vec<i64>>,
    /// Per image, its captions (possibly none).
    pub captions: Vec<Vec<String>>,
    /// What masks exist.
    pub masks: MaskKind,
}

/// Which images a stage trains or evaluates on. The judge's share of the training split is
/// disjoint from what everything else trains on, so no network is scored by a judge that
/// saw its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Partition {
    /// Training split minus the judge's share: generator, critic, text methods.
    Train,
    /// Every fourth training image: only the judge trains on these.
    JudgeTrain,
    /// The test split.
    Test,
}

const MAX_INDEX_FILE: u64 = 512 << 20;

impl Dataset {
    /// Indices (into `images`) of a partition, in file order.
    pub fn partition(&self, which: Partition) -> Vec<usize> {
        let mut train_seen = 0usize;
        let mut out = Vec::new();
        for (i, im) in self.images.iter().enumerate() {
            let keep = if im.is_train {
                let judge = train_seen % 4 == 3;
                train_seen += 1;
                match which {
                    Partition::Train => !judge,
                    Partition::JudgeTrain => judge,
                    Partition::Test => false,
                }
            } else {
                which == Partition::Test
            };
            if keep {
                out.push(i);
            }
        }
        out
    }

    /// Number of per-pixel classes of the masks (0 if there are none).
    pub fn mask_classes(&self) -> usize {
        match &self.masks {
            MaskKind::Parts(names) => names.len(),
            MaskKind::Segmentation => 2,
            MaskKind::None => 0,
        }
    }

    /// Loads images as a float tensor `[n, 3, res, res]` in [-1, 1], resizing if needed.
    pub fn load_images(&self, indices: &[usize], res: u32) -> Result<Tensor, DatasetError> {
        let mut data = Vec::with_capacity(indices.len() * 3 * (res * res) as usize);
        for &i in indices {
            let path = self.root.join("images").join(&self.images[i].rel_path);
            let img = image::open(&path).map_err(|e| DatasetError::Image {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let img = img.to_rgb8();
            let img = if img.width() == res && img.height() == res {
                img
            } else {
                image::imageops::resize(&img, res, res, image::imageops::FilterType::Triangle)
            };
            let plane = (res * res) as usize;
            let start = data.len();
            data.resize(start + 3 * plane, 0.0f32);
            for (p, px) in img.pixels().enumerate() {
                for c in 0..3 {
                    data[start + c * plane + p] = px[c] as f32 / 127.5 - 1.0;
                }
            }
        }
        Ok(Tensor::from_slice(&data).view([indices.len() as i64, 3, res as i64, res as i64]))
    }

    /// Loads masks as `[n, res, res]` int64 labels (nearest-neighbour resize), if any exist.
    pub fn load_masks(&self, indices: &[usize], res: u32) -> Result<Option<Tensor>, DatasetError> {
        let dir = match self.masks {
            MaskKind::Parts(_) => "part_masks",
            MaskKind::Segmentation => "segmentations",
            MaskKind::None => return Ok(None),
        };
        let classes = self.mask_classes() as u8;
        let mut data = Vec::with_capacity(indices.len() * (res * res) as usize);
        for &i in indices {
            let path = self
                .root
                .join(dir)
                .join(format!("{}.png", self.images[i].stem()));
            let img = image::open(&path).map_err(|e| DatasetError::Image {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let img = img.to_luma8();
            let img = if img.width() == res && img.height() == res {
                img
            } else {
                image::imageops::resize(&img, res, res, image::imageops::FilterType::Nearest)
            };
            for px in img.pixels() {
                let label = if matches!(self.masks, MaskKind::Segmentation) {
                    (px[0] >= 128) as u8
                } else {
                    px[0]
                };
                if label >= classes {
                    return Err(DatasetError::Image {
                        path: path.clone(),
                        message: format!("label {label} is outside the {classes} known parts"),
                    });
                }
                data.push(label as i64);
            }
        }
        Ok(Some(Tensor::from_slice(&data).view([
            indices.len() as i64,
            res as i64,
            res as i64,
        ])))
    }

    /// Attribute labels `[n, groups]` (value index or -1) for the given images.
    pub fn label_tensor(&self, indices: &[usize]) -> Tensor {
        let flat: Vec<i64> = indices
            .iter()
            .flat_map(|&i| self.labels[i].iter().copied())
            .collect();
        Tensor::from_slice(&flat)
            .view([indices.len() as i64, self.groups.len() as i64])
            .to_kind(Kind::Int64)
    }
}
