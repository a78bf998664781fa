//! `plume-worker dataset show`: a contact sheet of a dataset and a summary of its counts and
//! attribute balance.

use super::{Dataset, DatasetError, MaskKind, Partition};
use crate::picture::{Canvas, LINE_H};
use std::fmt::Write as _;
use std::path::Path;

/// Writes a contact sheet of the first `count` images (each with its first caption and,
/// where masks exist, its part mask in false colour) to `out`.
pub fn contact_sheet(ds: &Dataset, count: usize, out: &Path) -> Result<(), DatasetError> {
    let indices: Vec<usize> = (0..ds.images.len().min(count)).collect();
    let res = 64u32;
    let images = super::Dataset::load_images(ds, &indices, res)?;
    let masks = ds.load_masks(&indices, res)?;
    let rgbs = crate::picture::tensor_to_rgb(&images);
    let cols = 6u32;
    let show_mask = masks.is_some();
    let cell_w = if show_mask { 2 * res + 6 } else { res + 4 };
    let cell_w = cell_w.max(136);
    let text_lines = 4;
    let cell_h = res + 4 + text_lines * LINE_H + 4;
    let rows = (indices.len() as u32).div_ceil(cols);
    let mut canvas = Canvas::new(cols * cell_w + 4, rows * cell_h + 4, [255, 255, 255]);
    let palette: [[u8; 3]; 10] = [
        [30, 30, 30],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
    ];
    for (k, rgb) in rgbs.iter().enumerate() {
        let (r, c) = (k as u32 / cols, k as u32 % cols);
        let (x, y) = (4 + c * cell_w, 4 + r * cell_h);
        canvas.blit(x, y, res, res, rgb, 1);
        if let Some(m) = &masks {
            let labels = Vec::<i64>::try_from(&m.get(k as i64).flatten(0, -1)).expect("int mask");
            let coloured: Vec<u8> = labels
                .iter()
                .flat_map(|&l| palette[l as usize % palette.len()])
                .collect();
            canvas.blit(x + res + 2, y, res, res, &coloured, 1);
        }
        let im = &ds.images[indices[k]];
        let caption = ds.captions[indices[k]]
            .first()
            .map(String::as_str)
            .unwrap_or("(no caption)");
        let text = format!("#{} {}", im.id, caption);
        let lines = crate::picture::wrap(&text, (cell_w / crate::picture::CHAR_W) as usize - 1);
        for (i, line) in lines.iter().take(text_lines as usize).enumerate() {
            canvas.text(x, y + res + 3 + i as u32 * LINE_H, line, 1, [20, 20, 20]);
        }
    }
    canvas.save(out).map_err(|e| DatasetError::Image {
        path: out.to_owned(),
        message: e.to_string(),
    })
}

/// Counts per split and partition, captions, and how often each attribute value is present.
pub fn summary(ds: &Dataset) -> String {
    let mut s = String::new();
    let train = ds.images.iter().filter(|i| i.is_train).count();
    let _ = writeln!(s, "dataset {}", ds.root.display());
    let _ = writeln!(
        s,
        "  images {} (train {}, test {}), classes {}",
        ds.images.len(),
        train,
        ds.images.len() - train,
        ds.classes.len()
    );
    let _ = writeln!(
        s,
        "  partitions: train {} | judge-train {} | test {}",
        ds.partition(Partition::Train).len(),
        ds.partition(Partition::JudgeTrain).len(),
        ds.partition(Partition::Test).len()
    );
    let captions: usize = ds.captions.iter().map(Vec::len).sum();
    let without = ds.captions.iter().filter(|c| c.is_empty()).count();
    let _ = writeln!(s, "  captions {captions} ({without} images without)");
    let masks = match &ds.masks {
        MaskKind::Parts(p) => format!("part masks ({})", p.join(", ")),
        MaskKind::Segmentation => "bird segmentations".into(),
        MaskKind::None => "none".into(),
    };
    let _ = writeln!(s, "  masks: {masks}");
    let _ = writeln!(s, "  attribute balance (share of images with each value):");
    for (g, group) in ds.groups.iter().enumerate() {
        let mut counts = vec![0usize; group.values.len()];
        let mut unlabelled = 0;
        for labels in &ds.labels {
            match labels[g] {
                v if v >= 0 => counts[v as usize] += 1,
                _ => unlabelled += 1,
            }
        }
        let n = ds.labels.len() as f64;
        let parts: Vec<String> = group
            .values
            .iter()
            .zip(&counts)
            .map(|(v, &c)| format!("{}={:.1}%", v, 100.0 * c as f64 / n))
            .collect();
        let _ = write!(s, "    {:<22} {}", group.name, parts.join(" "));
        if unlabelled > 0 {
            let _ = write!(s, " (unlabelled {:.1}%)", 100.0 * unlabelled as f64 / n);
        }
        s.push('\n');
    }
    s
}
