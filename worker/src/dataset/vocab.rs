//! The attribute vocabulary of synthetic birds, named as in CUB-200-2011, and the caption
//! phrasings. One place for words: the renderer, the captioner and the tests read them here.

/// CUB's 15 colour names, in CUB's order, with the RGB the renderer paints them.
pub const COLOURS: [(&str, [u8; 3]); 15] = [
    ("blue", [40, 80, 220]),
    ("brown", [120, 72, 32]),
    ("iridescent", [40, 175, 165]),
    ("purple", [125, 45, 165]),
    ("rufous", [185, 85, 25]),
    ("grey", [128, 128, 128]),
    ("yellow", [245, 225, 40]),
    ("olive", [125, 125, 35]),
    ("green", [35, 160, 55]),
    ("pink", [245, 150, 185]),
    ("orange", [250, 145, 15]),
    ("black", [18, 18, 18]),
    ("white", [248, 248, 248]),
    ("buff", [215, 185, 135]),
    ("red", [215, 25, 30]),
];

/// CUB's bill-length values, with the word captions use and the bill length (relative to
/// the head, whose diameter is 0.2) that the renderer draws.
pub const BILL_LENGTHS: [(&str, &str, f32); 3] = [
    ("about_the_same_as_head", "medium", 0.16),
    ("longer_than_head", "long", 0.28),
    ("shorter_than_head", "short", 0.07),
];

/// CUB's size values used here, with the caption word and the drawing scale.
pub const SIZES: [(&str, &str, f32); 3] = [
    ("small_(5_-_9_in)", "small", 0.64),
    ("medium_(9_-_16_in)", "medium-sized", 0.77),
    ("large_(16_-_32_in)", "large", 0.90),
];

/// Background kinds (not a CUB attribute: a Plume extension so edits can be checked to leave
/// the scene alone), with the phrase captions use.
pub const BACKGROUNDS: [(&str, &str); 4] = [
    ("sky", "the sky"),
    ("water", "the water"),
    ("foliage", "the leaves"),
    ("ground", "the ground"),
];

/// The attribute groups a synthetic bird has, in the order of `attributes.txt`.
/// Each group has exactly one present value per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// `has_breast_color`
    BreastColour,
    /// `has_wing_color`
    WingColour,
    /// `has_crown_color`
    CrownColour,
    /// `has_upperparts_color`: body, nape, back and tail.
    UpperpartsColour,
    /// `has_bill_length`
    BillLength,
    /// `has_size`
    Size,
    /// `has_background`
    Background,
}

impl Group {
    /// Every group, in file order.
    pub const ALL: [Group; 7] = [
        Group::BreastColour,
        Group::WingColour,
        Group::CrownColour,
        Group::UpperpartsColour,
        Group::BillLength,
        Group::Size,
        Group::Background,
    ];

    /// Position in `Group::ALL` (the column of label tensors).
    pub fn index(self) -> usize {
        Group::ALL
            .iter()
            .position(|g| *g == self)
            .expect("every group is in Group::ALL")
    }

    /// The CUB name of the group (the part before `::`).
    pub fn cub_name(self) -> &'static str {
        match self {
            Group::BreastColour => "has_breast_color",
            Group::WingColour => "has_wing_color",
            Group::CrownColour => "has_crown_color",
            Group::UpperpartsColour => "has_upperparts_color",
            Group::BillLength => "has_bill_length",
            Group::Size => "has_size",
            Group::Background => "has_background",
        }
    }

    /// Part labels (of `PARTS`) whose pixels change when this group's value changes: the
    /// rest of the image should not (the benchmark's region preservation, and the edit
    /// losses' unedited region).
    pub fn parts(self) -> &'static [i64] {
        match self {
            Group::BreastColour => &[2],
            Group::WingColour => &[3],
            Group::CrownColour => &[4],
            Group::UpperpartsColour => &[1, 5, 7],
            Group::BillLength => &[5, 6],
            Group::Size => &[1, 2, 3, 4, 5, 6, 7, 8, 9],
            Group::Background => &[0],
        }
    }

    /// The CUB names of the group's values (the part after `::`).
    pub fn values(self) -> Vec<&'static str> {
        match self {
            Group::BreastColour
            | Group::WingColour
            | Group::CrownColour
            | Group::UpperpartsColour => COLOURS.iter().map(|c| c.0).collect(),
            Group::BillLength => BILL_LENGTHS.iter().map(|b| b.0).collect(),
            Group::Size => SIZES.iter().map(|s| s.0).collect(),
            Group::Background => BACKGROUNDS.iter().map(|b| b.0).collect(),
        }
    }
}

/// Full attribute names (`group::value`) in `attributes.txt` order (ids start at 1).
pub fn attribute_names() -> Vec<String> {
    Group::ALL
        .iter()
        .flat_map(|g| {
            g.values()
                .into_iter()
                .map(move |v| format!("{}::{}", g.cub_name(), v))
        })
        .collect()
}

/// Part labels of the per-pixel masks (`parts/parts.txt`); 0 is background.
pub const PARTS: [&str; 10] = [
    "background",
    "body",
    "breast",
    "wing",
    "crown",
    "head",
    "bill",
    "tail",
    "eye",
    "legs",
];

/// Caption phrasings. Slots: {breast} {wing} {crown} {upper} colours, {bill} length word,
/// {size} size word, {bg} background phrase. A colour word is always followed by the word
/// of the part it colours (breast, wings, crown, head, back, body, bird), so captions can be checked.
pub const PHRASINGS: [&str; 12] = [
    "this bird has a {breast} breast, {wing} wings and a {bill} bill",
    "a {size} {upper} bird with {wing} wings",
    "this {size} bird has a {crown} crown and a {breast} breast",
    "a bird with {wing} wings, a {crown} crown and a {upper} back",
    "the bird has a {bill} bill, a {breast} breast and {wing} wings",
    "this is a {upper} bird with a {crown} crown and a {bill} bill",
    "a {size} bird with a {breast} breast and a {crown} crown in front of {bg}",
    "{wing} wings, a {breast} breast and a {crown} head on this {size} bird",
    "this bird has a {upper} body, {wing} wings, a {breast} breast and a {crown} crown",
    "a {size} bird with a {upper} back, a {breast} breast, {wing} wings and a {crown} crown",
    "a bird with a {bill} bill and a {breast} breast near {bg}",
    "this {size} bird has a {bill} bill and {wing} wings",
];

/// Which group a part word following a colour word names in a caption.
pub fn group_of_part_word(word: &str) -> Option<Group> {
    match word {
        "breast" => Some(Group::BreastColour),
        "wings" => Some(Group::WingColour),
        "crown" | "head" => Some(Group::CrownColour),
        "back" | "bird" | "body" => Some(Group::UpperpartsColour),
        _ => None,
    }
}

/// The attribute values a caption names, as `(group, value index)` in the order they appear:
/// a colour word followed by its part word, a bill-length word followed by "bill", a size
/// word, a background phrase. Groups a caption does not mention are absent, which is what
/// lets an edit loss ask only for what the caption says (ml.md section 5, lesson 1).
pub fn mentioned_values(caption: &str) -> Vec<(Group, usize)> {
    let lower = caption.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut out: Vec<(Group, usize)> = Vec::new();
    let mut push = |group: Group, value: usize| {
        if !out.iter().any(|(g, _)| *g == group) {
            out.push((group, value));
        }
    };
    for (i, word) in words.iter().enumerate() {
        let next = words.get(i + 1).copied().unwrap_or("");
        if let Some(c) = COLOURS.iter().position(|(name, _)| name == word) {
            if let Some(group) = group_of_part_word(next) {
                push(group, c);
            }
        } else if let Some(b) = BILL_LENGTHS.iter().position(|(_, w, _)| w == word) {
            if next == "bill" {
                push(Group::BillLength, b);
            }
        } else if let Some(s) = SIZES.iter().position(|(_, w, _)| w == word) {
            push(Group::Size, s);
        }
    }
    for (b, (_, phrase)) in BACKGROUNDS.iter().enumerate() {
        if lower.contains(phrase) {
            push(Group::Background, b);
        }
    }
    out
}
