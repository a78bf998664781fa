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
pub mod render;
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

fn read_index(path: &Path) -> Result<String, DatasetError> {
    let meta = fs::metadata(path).map_err(|e| DatasetError::io(path, e))?;
    if meta.len() > MAX_INDEX_FILE {
        return Err(DatasetError::Invalid(format!(
            "{}: {} bytes is too large for an index file",
            path.display(),
            meta.len()
        )));
    }
    let bytes = fs::read(path).map_err(|e| DatasetError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| DatasetError::Parse {
        path: path.to_owned(),
        line: 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not valid UTF-8".into(),
    })
}

/// Parses the non-empty lines of an index file into `n` whitespace-separated fields
/// (the last field takes the rest of the line).
fn parse_lines<'a>(
    path: &'a Path,
    text: &'a str,
    n: usize,
) -> impl Iterator<Item = Result<(usize, Vec<&'a str>), DatasetError>> + 'a {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(move |(i, l)| {
            let fields: Vec<&str> = l
                .trim()
                .splitn(n, char::is_whitespace)
                .map(str::trim)
                .collect();
            if fields.len() != n || fields.iter().any(|f| f.is_empty()) {
                return Err(DatasetError::Parse {
                    path: path.to_owned(),
                    line: i + 1,
                    message: format!("expected {n} fields, found {:?}", l),
                });
            }
            Ok((i + 1, fields))
        })
}

fn parse_num<T: std::str::FromStr>(
    path: &Path,
    line: usize,
    field: &str,
    what: &str,
) -> Result<T, DatasetError> {
    field.parse().map_err(|_| DatasetError::Parse {
        path: path.to_owned(),
        line,
        message: format!("{what} must be a non-negative integer, found {field:?}"),
    })
}

/// A relative path from an index file must stay inside the dataset.
fn check_relative(path: &Path, line: usize, rel: &str) -> Result<(), DatasetError> {
    let bad = rel.starts_with('/')
        || rel.contains('\\')
        || rel
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty());
    if bad {
        return Err(DatasetError::Parse {
            path: path.to_owned(),
            line,
            message: format!("path {rel:?} must be relative and stay inside the dataset"),
        });
    }
    Ok(())
}

impl Dataset {
    /// Reads and checks every index file of a dataset directory. Images themselves are read
    /// lazily by [`Dataset::load_images`].
    pub fn open(root: &Path) -> Result<Dataset, DatasetError> {
        let p = |rel: &str| root.join(rel);
        if !root.is_dir() {
            return Err(DatasetError::Invalid(format!(
                "{} is not a dataset directory",
                root.display()
            )));
        }
        let classes_path = p("classes.txt");
        let classes_txt = read_index(&classes_path)?;
        let mut classes = Vec::new();
        for r in parse_lines(&classes_path, &classes_txt, 2) {
            let (line, f) = r?;
            let id: usize = parse_num(&classes_path, line, f[0], "class id")?;
            if id != classes.len() + 1 {
                return Err(DatasetError::Parse {
                    path: classes_path.clone(),
                    line,
                    message: format!(
                        "class ids must be 1, 2, 3, ... in order; expected {}, found {id}",
                        classes.len() + 1
                    ),
                });
            }
            check_relative(&classes_path, line, f[1])?;
            classes.push(f[1].to_owned());
        }

        let images_path = p("images.txt");
        let images_txt = read_index(&images_path)?;
        let mut images = Vec::new();
        let mut index_of: HashMap<u32, usize> = HashMap::new();
        for r in parse_lines(&images_path, &images_txt, 2) {
            let (line, f) = r?;
            let id: u32 = parse_num(&images_path, line, f[0], "image id")?;
            check_relative(&images_path, line, f[1])?;
            if index_of.insert(id, images.len()).is_some() {
                return Err(DatasetError::Parse {
                    path: images_path.clone(),
                    line,
                    message: format!("image id {id} appears twice"),
                });
            }
            images.push(ImageEntry {
                id,
                rel_path: f[1].to_owned(),
                class: usize::MAX,
                is_train: false,
            });
        }
        if images.is_empty() {
            return Err(DatasetError::Invalid(format!(
                "{} lists no images",
                images_path.display()
            )));
        }
        let lookup = |path: &Path, line: usize, field: &str| -> Result<usize, DatasetError> {
            let id: u32 = parse_num(path, line, field, "image id")?;
            index_of
                .get(&id)
                .copied()
                .ok_or_else(|| DatasetError::Parse {
                    path: path.to_owned(),
                    line,
                    message: format!("image id {id} is not in images.txt"),
                })
        };

        let labels_path = p("image_class_labels.txt");
        let labels_txt = read_index(&labels_path)?;
        for r in parse_lines(&labels_path, &labels_txt, 2) {
            let (line, f) = r?;
            let i = lookup(&labels_path, line, f[0])?;
            let class: usize = parse_num(&labels_path, line, f[1], "class id")?;
            if class == 0 || class > classes.len() {
                return Err(DatasetError::Parse {
                    path: labels_path.clone(),
                    line,
                    message: format!(
                        "class id {class} is not in classes.txt (1..={})",
                        classes.len()
                    ),
                });
            }
            images[i].class = class - 1;
        }
        if let Some(missing) = images.iter().find(|im| im.class == usize::MAX) {
            return Err(DatasetError::Invalid(format!(
                "{}: image {} has no class",
                labels_path.display(),
                missing.id
            )));
        }

        let split_path = p("train_test_split.txt");
        let split_txt = read_index(&split_path)?;
        let mut seen = vec![false; images.len()];
        for r in parse_lines(&split_path, &split_txt, 2) {
            let (line, f) = r?;
            let i = lookup(&split_path, line, f[0])?;
            images[i].is_train = match f[1] {
                "1" => true,
                "0" => false,
                other => {
                    return Err(DatasetError::Parse {
                        path: split_path.clone(),
                        line,
                        message: format!("expected 1 (train) or 0 (test), found {other:?}"),
                    })
                }
            };
            seen[i] = true;
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(DatasetError::Invalid(format!(
                "{}: image {} has no split",
                split_path.display(),
                images[i].id
            )));
        }

        let attrs_path = p("attributes/attributes.txt");
        let attrs_txt = read_index(&attrs_path)?;
        let mut groups: Vec<AttributeGroup> = Vec::new();
        // attribute index (0-based) -> (group, value)
        let mut attr_slot: Vec<(usize, usize)> = Vec::new();
        for r in parse_lines(&attrs_path, &attrs_txt, 2) {
            let (line, f) = r?;
            let id: usize = parse_num(&attrs_path, line, f[0], "attribute id")?;
            if id != attr_slot.len() + 1 {
                return Err(DatasetError::Parse {
                    path: attrs_path.clone(),
                    line,
                    message: format!(
                        "attribute ids must be 1, 2, 3, ... in order; expected {}, found {id}",
                        attr_slot.len() + 1
                    ),
                });
            }
            let Some((group, value)) = f[1].split_once("::") else {
                return Err(DatasetError::Parse {
                    path: attrs_path.clone(),
                    line,
                    message: format!("expected <group>::<value>, found {:?}", f[1]),
                });
            };
            let g = match groups.iter().position(|g| g.name == group) {
                Some(g) => g,
                None => {
                    groups.push(AttributeGroup {
                        name: group.to_owned(),
                        values: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            groups[g].values.push(value.to_owned());
            attr_slot.push((g, groups[g].values.len() - 1));
        }

        let ial_path = p("attributes/image_attribute_labels.txt");
        let ial_txt = read_index(&ial_path)?;
        let mut labels = vec![vec![-1i64; groups.len()]; images.len()];
        for (i, l) in ial_txt.lines().enumerate() {
            let line = i + 1;
            if l.trim().is_empty() {
                continue;
            }
            let mut it = l.split_whitespace();
            let (Some(img), Some(attr), Some(present)) = (it.next(), it.next(), it.next()) else {
                return Err(DatasetError::Parse {
                    path: ial_path.clone(),
                    line,
                    message:
                        "expected <image_id> <attribute_id> <is_present> <certainty_id> <time>"
                            .into(),
                });
            };
            let im = lookup(&ial_path, line, img)?;
            let a: usize = parse_num(&ial_path, line, attr, "attribute id")?;
            if a == 0 || a > attr_slot.len() {
                return Err(DatasetError::Parse {
                    path: ial_path.clone(),
                    line,
                    message: format!(
                        "attribute id {a} is not in attributes.txt (1..={})",
                        attr_slot.len()
                    ),
                });
            }
            match present {
                "1" => {
                    let (g, v) = attr_slot[a - 1];
                    // Real CUB can mark several values of a group; the first one wins.
                    if labels[im][g] < 0 {
                        labels[im][g] = v as i64;
                    }
                }
                "0" => {}
                other => {
                    return Err(DatasetError::Parse {
                        path: ial_path.clone(),
                        line,
                        message: format!("is_present must be 0 or 1, found {other:?}"),
                    })
                }
            }
        }

        let mut captions = Vec::with_capacity(images.len());
        for im in &images {
            let path = root.join("text_c10").join(format!("{}.txt", im.stem()));
            match fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    captions.push(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => captions.push(Vec::new()),
                Err(e) => return Err(DatasetError::io(&path, e)),
            }
        }

        let parts_path = p("part_masks/parts.txt");
        let masks = if parts_path.exists() {
            let txt = read_index(&parts_path)?;
            let mut names = Vec::new();
            for r in parse_lines(&parts_path, &txt, 2) {
                let (line, f) = r?;
                let id: usize = parse_num(&parts_path, line, f[0], "part label")?;
                if id != names.len() {
                    return Err(DatasetError::Parse {
                        path: parts_path.clone(),
                        line,
                        message: format!(
                            "part labels must be 0, 1, 2, ... in order; expected {}",
                            names.len()
                        ),
                    });
                }
                names.push(f[1].to_owned());
            }
            MaskKind::Parts(names)
        } else if p("segmentations").is_dir() {
            MaskKind::Segmentation
        } else {
            MaskKind::None
        };

        Ok(Dataset {
            root: root.to_owned(),
            classes,
            images,
            groups,
            labels,
            captions,
            masks,
        })
    }

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
