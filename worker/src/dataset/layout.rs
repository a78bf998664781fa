//! Reading a dataset directory in the CUB-200-2011 layout (ml.md §1): one reader per index
//! file, each checking what it reads and naming the file and line of anything wrong.
//! [`Dataset::open`] runs them in order.

use super::*;

impl Dataset {
    /// Reads and checks every index file of a dataset directory. Images themselves are read
    /// lazily by [`Dataset::load_images`].
    pub fn open(root: &Path) -> Result<Dataset, DatasetError> {
        if !root.is_dir() {
            return Err(DatasetError::Invalid(format!(
                "{} is not a dataset directory",
                root.display()
            )));
        }
        let classes = read_classes(&root.join("classes.txt"))?;
        let (mut images, index_of) = read_images(&root.join("images.txt"))?;
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
        read_class_labels(
            &root.join("image_class_labels.txt"),
            &mut images,
            classes.len(),
            &lookup,
        )?;
        read_split(&root.join("train_test_split.txt"), &mut images, &lookup)?;
        let Attributes { groups, attr_slot } =
            read_attributes(&root.join("attributes/attributes.txt"))?;
        let labels = read_image_attribute_labels(
            &root.join("attributes/image_attribute_labels.txt"),
            images.len(),
            groups.len(),
            &attr_slot,
            &lookup,
        )?;
        let captions = read_captions(root, &images)?;
        let masks = read_masks(root)?;
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
}

/// What `attributes.txt` defines.
struct Attributes {
    /// The attribute groups and their values.
    groups: Vec<AttributeGroup>,
    /// For each attribute id (0-based), its group and value.
    attr_slot: Vec<(usize, usize)>,
}

/// Finds an image's index from an id field of an index file.
type Lookup<'a> = dyn Fn(&Path, usize, &str) -> Result<usize, DatasetError> + 'a;

/// `classes.txt`: `<id> <name>`, ids 1, 2, 3, ... in order.
fn read_classes(classes_path: &Path) -> Result<Vec<String>, DatasetError> {
    let classes_txt = read_index(classes_path)?;
    let mut classes = Vec::new();
    for r in parse_lines(classes_path, &classes_txt, 2) {
        let (line, f) = r?;
        let id: usize = parse_num(classes_path, line, f[0], "class id")?;
        if id != classes.len() + 1 {
            return Err(DatasetError::Parse {
                path: classes_path.to_path_buf(),
                line,
                message: format!(
                    "class ids must be 1, 2, 3, ... in order; expected {}, found {id}",
                    classes.len() + 1
                ),
            });
        }
        check_relative(classes_path, line, f[1])?;
        classes.push(f[1].to_owned());
    }
    Ok(classes)
}

/// `images.txt`: `<id> <relative path>`; the entries and an id -> index map.
fn read_images(images_path: &Path) -> Result<(Vec<ImageEntry>, HashMap<u32, usize>), DatasetError> {
    let images_txt = read_index(images_path)?;
    let mut images = Vec::new();
    let mut index_of: HashMap<u32, usize> = HashMap::new();
    for r in parse_lines(images_path, &images_txt, 2) {
        let (line, f) = r?;
        let id: u32 = parse_num(images_path, line, f[0], "image id")?;
        check_relative(images_path, line, f[1])?;
        if index_of.insert(id, images.len()).is_some() {
            return Err(DatasetError::Parse {
                path: images_path.to_path_buf(),
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
    Ok((images, index_of))
}

/// `image_class_labels.txt`: every image's class.
fn read_class_labels(
    labels_path: &Path,
    images: &mut [ImageEntry],
    classes: usize,
    lookup: &Lookup,
) -> Result<(), DatasetError> {
    let labels_txt = read_index(labels_path)?;
    for r in parse_lines(labels_path, &labels_txt, 2) {
        let (line, f) = r?;
        let i = lookup(labels_path, line, f[0])?;
        let class: usize = parse_num(labels_path, line, f[1], "class id")?;
        if class == 0 || class > classes {
            return Err(DatasetError::Parse {
                path: labels_path.to_path_buf(),
                line,
                message: format!("class id {class} is not in classes.txt (1..={})", classes),
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
    Ok(())
}

/// `train_test_split.txt`: every image's split.
fn read_split(
    split_path: &Path,
    images: &mut [ImageEntry],
    lookup: &Lookup,
) -> Result<(), DatasetError> {
    let split_txt = read_index(split_path)?;
    let mut seen = vec![false; images.len()];
    for r in parse_lines(split_path, &split_txt, 2) {
        let (line, f) = r?;
        let i = lookup(split_path, line, f[0])?;
        images[i].is_train = match f[1] {
            "1" => true,
            "0" => false,
            other => {
                return Err(DatasetError::Parse {
                    path: split_path.to_path_buf(),
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
    Ok(())
}

/// `attributes/attributes.txt`: `<id> <group>::<value>`; the groups, and for each attribute
/// id (0-based) its group and value.
fn read_attributes(attrs_path: &Path) -> Result<Attributes, DatasetError> {
    let attrs_txt = read_index(attrs_path)?;
    let mut groups: Vec<AttributeGroup> = Vec::new();
    // attribute index (0-based) -> (group, value)
    let mut attr_slot: Vec<(usize, usize)> = Vec::new();
    for r in parse_lines(attrs_path, &attrs_txt, 2) {
        let (line, f) = r?;
        let id: usize = parse_num(attrs_path, line, f[0], "attribute id")?;
        if id != attr_slot.len() + 1 {
            return Err(DatasetError::Parse {
                path: attrs_path.to_path_buf(),
                line,
                message: format!(
                    "attribute ids must be 1, 2, 3, ... in order; expected {}, found {id}",
                    attr_slot.len() + 1
                ),
            });
        }
        let Some((group, value)) = f[1].split_once("::") else {
            return Err(DatasetError::Parse {
                path: attrs_path.to_path_buf(),
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
    Ok(Attributes { groups, attr_slot })
}

/// `attributes/image_attribute_labels.txt`: per image, the value of each group (-1 where
/// none is marked).
fn read_image_attribute_labels(
    ial_path: &Path,
    images: usize,
    groups: usize,
    attr_slot: &[(usize, usize)],
    lookup: &Lookup,
) -> Result<Vec<Vec<i64>>, DatasetError> {
    let ial_txt = read_index(ial_path)?;
    let mut labels = vec![vec![-1i64; groups]; images];
    for (i, l) in ial_txt.lines().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let mut it = l.split_whitespace();
        let (Some(img), Some(attr), Some(present)) = (it.next(), it.next(), it.next()) else {
            return Err(DatasetError::Parse {
                path: ial_path.to_path_buf(),
                line,
                message: "expected <image_id> <attribute_id> <is_present> <certainty_id> <time>"
                    .into(),
            });
        };
        let im = lookup(ial_path, line, img)?;
        let a: usize = parse_num(ial_path, line, attr, "attribute id")?;
        if a == 0 || a > attr_slot.len() {
            return Err(DatasetError::Parse {
                path: ial_path.to_path_buf(),
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
                    path: ial_path.to_path_buf(),
                    line,
                    message: format!("is_present must be 0 or 1, found {other:?}"),
                })
            }
        }
    }
    Ok(labels)
}

/// `text_c10/<class>/<image>.txt`: captions, one per line (none where the file is missing).
fn read_captions(root: &Path, images: &[ImageEntry]) -> Result<Vec<Vec<String>>, DatasetError> {
    let mut captions = Vec::with_capacity(images.len());
    for im in images {
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
    Ok(captions)
}

/// `part_masks/parts.txt` (per-part masks) or `segmentations/` (bird masks), if present.
fn read_masks(root: &Path) -> Result<MaskKind, DatasetError> {
    let p = |rel: &str| root.join(rel);
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
    Ok(masks)
}

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
