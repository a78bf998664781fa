//! The synthetic-birds renderer and the CUB-layout loader.

use plume_worker::dataset::render::{bird_for, render};
use plume_worker::dataset::synth::{caption, write_dataset, SynthSpec, CAPTIONS_PER_IMAGE};
use plume_worker::dataset::vocab::{group_of_part_word, Group, COLOURS, PHRASINGS};
use plume_worker::dataset::{Dataset, MaskKind, Partition};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

fn render_to(dir: &Path, images: u32, resolution: u32, seed: u64) {
    write_dataset(
        dir,
        &SynthSpec {
            images,
            resolution,
            seed,
        },
        |_, _| {},
    )
    .expect("render");
}

fn all_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn same_seed_gives_byte_identical_files_and_other_seeds_differ() {
    let tmp = tempfile::tempdir().unwrap();
    for res in [32, 64, 128] {
        let (a, b, c) = (
            tmp.path().join(format!("a{res}")),
            tmp.path().join(format!("b{res}")),
            tmp.path().join(format!("c{res}")),
        );
        render_to(&a, 30, res, 11);
        render_to(&b, 30, res, 11);
        render_to(&c, 30, res, 12);
        let (fa, fb, fc) = (all_files(&a), all_files(&b), all_files(&c));
        assert!(
            fa.len() > 90,
            "expected images, masks, captions and index files, got {}",
            fa.len()
        );
        assert_eq!(fa, fb, "same seed must give the same bytes at {res} px");
        assert_ne!(fa.get("images.txt"), None);
        let differing = fa.iter().filter(|(k, v)| fc.get(*k) != Some(v)).count();
        assert!(
            differing > 30,
            "another seed should change most files, changed {differing}"
        );
    }
}

#[test]
fn loader_reads_back_everything_the_renderer_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("birds");
    let (n, res, seed) = (120u32, 32u32, 5u64);
    render_to(&dir, n, res, seed);
    let ds = Dataset::open(&dir).expect("open");
    assert_eq!(ds.images.len(), n as usize);
    assert_eq!(ds.classes.len(), 9);
    assert_eq!(
        ds.groups
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>(),
        Group::ALL.iter().map(|g| g.cub_name()).collect::<Vec<_>>()
    );
    assert_eq!(
        ds.masks,
        MaskKind::Parts(
            plume_worker::dataset::vocab::PARTS
                .iter()
                .map(|s| s.to_string())
                .collect()
        )
    );
    let all: Vec<usize> = (0..ds.images.len()).collect();
    let images = ds.load_images(&all, res).unwrap();
    let masks = ds.load_masks(&all, res).unwrap().expect("masks");
    for (i, im) in ds.images.iter().enumerate() {
        let (attrs, pose, _) = bird_for(seed, im.id as u64);
        let expected: Vec<i64> = attrs.values().iter().map(|&v| v as i64).collect();
        assert_eq!(
            ds.labels[i], expected,
            "attribute labels of image {}",
            im.id
        );
        assert_eq!(ds.captions[i].len(), CAPTIONS_PER_IMAGE);
        for c in &ds.captions[i] {
            assert!(
                PHRASINGS.iter().any(|p| caption(p, &attrs) == *c),
                "caption {c:?} of image {} is not one of its phrasings",
                im.id
            );
        }
        let picture = render(&attrs, &pose, res);
        let loaded_mask = Vec::<i64>::try_from(&masks.get(i as i64).flatten(0, -1)).unwrap();
        assert_eq!(
            loaded_mask,
            picture.parts.iter().map(|&p| p as i64).collect::<Vec<_>>(),
            "mask of image {}",
            im.id
        );
        let pixels =
            Vec::<f32>::try_from(&images.get(i as i64).permute([1, 2, 0]).flatten(0, -1)).unwrap();
        let bytes: Vec<u8> = pixels
            .iter()
            .map(|v| ((v + 1.0) * 127.5).round() as u8)
            .collect();
        assert_eq!(bytes, picture.rgb, "pixels of image {}", im.id);
    }
    let parts: Vec<Vec<usize>> = [Partition::Train, Partition::JudgeTrain, Partition::Test]
        .iter()
        .map(|&p| ds.partition(p))
        .collect();
    assert_eq!(
        parts.iter().map(Vec::len).sum::<usize>(),
        n as usize,
        "partitions cover every image once"
    );
    for a in 0..3 {
        for b in a + 1..3 {
            assert!(
                parts[a].iter().all(|i| !parts[b].contains(i)),
                "partitions {a} and {b} overlap"
            );
        }
    }
    assert!(!parts[1].is_empty() && !parts[2].is_empty());
}

#[test]
fn masks_match_the_drawn_part_colours() {
    // Every interior pixel labelled breast/wing/crown/body (its eight neighbours share the
    // label; edge pixels are anti-aliased blends) must carry that part's colour (up to the
    // per-image jitter of +-10), and the labelled parts must be visible at all sizes.
    for res in [32u32, 64, 128] {
        for id in 1..=40u64 {
            let (attrs, pose, _) = bird_for(3, id);
            let pic = render(&attrs, &pose, res);
            for (part, colour) in [
                (2u8, attrs.breast),
                (3, attrs.wing),
                (4, attrs.crown),
                (1, attrs.upper),
            ] {
                let want = COLOURS[colour].1;
                let mut count = 0;
                let n = res as usize;
                for (i, &p) in pic.parts.iter().enumerate() {
                    if p == part {
                        count += 1;
                        let (y, x) = (i / n, i % n);
                        let interior = y > 0
                            && x > 0
                            && y + 1 < n
                            && x + 1 < n
                            && [
                                i - n - 1,
                                i - n,
                                i - n + 1,
                                i - 1,
                                i + 1,
                                i + n - 1,
                                i + n,
                                i + n + 1,
                            ]
                            .iter()
                            .all(|&j| pic.parts[j] == part);
                        if !interior {
                            continue;
                        }
                        for c in 0..3 {
                            let d = (pic.rgb[i * 3 + c] as i32 - want[c] as i32).abs();
                            assert!(d <= 10, "res {res} bird {id}: part {part} pixel {i} has colour {:?}, expected ~{want:?}", &pic.rgb[i * 3..i * 3 + 3]);
                        }
                    }
                }
                assert!(
                    count >= 2,
                    "res {res} bird {id}: part {part} has only {count} pixels"
                );
            }
            for part in [5u8, 6, 7, 8, 9] {
                assert!(
                    pic.parts.contains(&part),
                    "res {res} bird {id}: part {part} missing"
                );
            }
        }
    }
}

#[test]
fn every_caption_colour_word_matches_the_image() {
    let colour_names: Vec<&str> = COLOURS.iter().map(|c| c.0).collect();
    for id in 1..=300u64 {
        let (attrs, _, _) = bird_for(9, id);
        let values = attrs.values();
        for p in PHRASINGS {
            let text = caption(p, &attrs);
            let words: Vec<&str> = text
                .split(|c: char| !c.is_alphanumeric() && c != '-')
                .filter(|w| !w.is_empty())
                .collect();
            let mut checked = 0;
            for (i, w) in words.iter().enumerate() {
                if let Some(colour) = colour_names.iter().position(|c| c == w) {
                    // "a small yellow bird": skip size words between the colour and the noun
                    let noun = words[i + 1..]
                        .iter()
                        .find(|n| group_of_part_word(n).is_some())
                        .expect("colour word without a part");
                    let group = group_of_part_word(noun).unwrap();
                    let g = Group::ALL.iter().position(|x| *x == group).unwrap();
                    assert_eq!(
                        values[g], colour,
                        "caption {text:?}: {w} {noun} contradicts the image"
                    );
                    checked += 1;
                }
            }
            assert!(checked >= 1, "caption {text:?} names no colour");
        }
    }
}

#[test]
fn malformed_datasets_get_errors_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    render_to(&good, 20, 32, 1);
    let copy = |name: &str| {
        let dst = tmp.path().join(name);
        for (rel, bytes) in all_files(&good) {
            let p = dst.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
        dst
    };
    type Edit = Box<dyn Fn(&str) -> String>;
    let cases: Vec<(&str, &str, Edit, &str)> = vec![
        (
            "bad-id",
            "images.txt",
            Box::new(|t: &str| t.replacen("3 ", "x ", 1)),
            "images.txt:3",
        ),
        (
            "escape",
            "images.txt",
            Box::new(|t: &str| t.replacen("2 ", "2 ../../etc/passwd\n#", 1)),
            "images.txt:2",
        ),
        (
            "short",
            "image_class_labels.txt",
            Box::new(|t: &str| t.replacen("4 ", "4\n", 1)),
            "image_class_labels.txt:4",
        ),
        (
            "class",
            "image_class_labels.txt",
            Box::new(|t: &str| {
                let mut l: Vec<String> = t.lines().map(String::from).collect();
                l[5] = "6 99".into();
                l.join("\n")
            }),
            "image_class_labels.txt:6",
        ),
        (
            "split",
            "train_test_split.txt",
            Box::new(|t: &str| {
                let mut l: Vec<String> = t.lines().map(String::from).collect();
                l[6] = "7 maybe".into();
                l.join("\n")
            }),
            "train_test_split.txt:7",
        ),
        (
            "attr",
            "attributes/attributes.txt",
            Box::new(|t: &str| t.replacen("has_wing_color::blue", "has_wing_color_blue", 1)),
            "attributes.txt:16",
        ),
        (
            "labels",
            "attributes/image_attribute_labels.txt",
            Box::new(|t: &str| t.replacen("1 3 ", "1 9999 ", 1)),
            "image_attribute_labels.txt:3",
        ),
    ];
    for (name, file, edit, expect) in cases {
        let dir = copy(name);
        let path = dir.join(file);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, edit(&text)).unwrap();
        let err = Dataset::open(&dir).expect_err(name).to_string();
        assert!(
            err.contains(expect),
            "{name}: error {err:?} should point at {expect}"
        );
    }
    let partial = copy("partial");
    fs::remove_file(partial.join("train_test_split.txt")).unwrap();
    let err = Dataset::open(&partial).expect_err("partial").to_string();
    assert!(err.contains("train_test_split.txt"), "{err}");
    let corrupt = copy("corrupt");
    let ds = Dataset::open(&corrupt).unwrap();
    fs::write(
        corrupt.join("images").join(&ds.images[0].rel_path),
        b"not a png",
    )
    .unwrap();
    let err = ds
        .load_images(&[0], 32)
        .expect_err("corrupt image")
        .to_string();
    assert!(err.contains(&ds.images[0].rel_path), "{err}");
}

#[test]
fn refuses_to_render_over_a_non_empty_directory_or_at_odd_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("keep.txt"), b"precious").unwrap();
    let err = write_dataset(
        tmp.path(),
        &SynthSpec {
            images: 5,
            resolution: 32,
            seed: 1,
        },
        |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(fs::read(tmp.path().join("keep.txt")).unwrap(), b"precious");
    let err = write_dataset(
        &tmp.path().join("x"),
        &SynthSpec {
            images: 5,
            resolution: 48,
            seed: 1,
        },
        |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("resolution"), "{err}");
}

/// The parser reads back exactly the groups a caption names: one, two and four groups, every
/// phrasing, and nothing from a caption without attribute words.
#[test]
fn captions_name_exactly_the_groups_they_mention() {
    use plume_worker::dataset::vocab::mentioned_values;
    let groups = |c: &str| {
        let mut g: Vec<(Group, usize)> = mentioned_values(c);
        g.sort_by_key(|(g, _)| Group::ALL.iter().position(|h| h == g));
        g
    };
    assert_eq!(
        groups("a bird with red wings"),
        vec![(Group::WingColour, 14)]
    );
    assert_eq!(
        groups("this small bird has an olive crown"),
        vec![(Group::CrownColour, 7), (Group::Size, 0)]
    );
    assert_eq!(
        groups("this bird has a blue body, black wings, a white breast and a grey crown"),
        vec![
            (Group::BreastColour, 12),
            (Group::WingColour, 11),
            (Group::CrownColour, 5),
            (Group::UpperpartsColour, 0),
        ]
    );
    assert_eq!(
        groups("a medium-sized bird with a long bill near the water"),
        vec![
            (Group::BillLength, 1),
            (Group::Size, 1),
            (Group::Background, 1)
        ]
    );
    assert!(groups("a bird").is_empty());
    // Every phrasing, filled with distinct values, reads back its slots' values.
    let attrs = plume_worker::dataset::render::BirdAttributes {
        breast: 1,
        wing: 2,
        crown: 3,
        upper: 4,
        bill: 2,
        size: 2,
        background: 3,
    };
    for p in PHRASINGS {
        let c = plume_worker::dataset::synth::caption(p, &attrs);
        let want: Vec<(Group, usize)> = [
            ("{breast}", Group::BreastColour, 1),
            ("{wing}", Group::WingColour, 2),
            ("{crown}", Group::CrownColour, 3),
            ("{upper}", Group::UpperpartsColour, 4),
            ("{bill}", Group::BillLength, 2),
            ("{size}", Group::Size, 2),
            ("{bg}", Group::Background, 3),
        ]
        .into_iter()
        .filter(|(slot, _, _)| p.contains(slot))
        .map(|(_, g, v)| (g, v))
        .collect();
        assert_eq!(groups(&c), want, "{c}");
    }
}
