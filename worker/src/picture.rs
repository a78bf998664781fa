//! Pictures people look at: sample grids, contact sheets, galleries. A small RGB canvas with
//! nearest-neighbour blits and a built-in 3x5 pixel font, so no font file is needed.

use std::path::Path;
use tch::{Kind, Tensor};

/// Glyphs of the 3x5 font: 5 rows of 3 bits, most significant bit on the left.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [6, 1, 2, 4, 7],
        '3' => [6, 1, 2, 1, 6],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 6, 1, 6],
        '6' => [3, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 6],
        ' ' => [0, 0, 0, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        '-' => [0, 0, 7, 0, 0],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '(' => [2, 4, 4, 4, 2],
        ')' => [2, 1, 1, 1, 2],
        '>' => [4, 2, 1, 2, 4],
        '<' => [1, 2, 4, 2, 1],
        '=' => [0, 7, 0, 7, 0],
        '_' => [0, 0, 0, 0, 7],
        '\'' => [2, 2, 0, 0, 0],
        '|' => [2, 2, 2, 2, 2],
        '+' => [0, 2, 7, 2, 0],
        '%' => [5, 1, 2, 4, 5],
        _ => [6, 1, 2, 0, 2], // '?'
    }
}

/// Width in pixels of one character cell at scale 1 (3 pixels + 1 space).
pub const CHAR_W: u32 = 4;
/// Height in pixels of one text line at scale 1 (5 pixels + 2 space).
pub const LINE_H: u32 = 7;

/// An RGB image under construction.
pub struct Canvas {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with one colour.
    pub fn new(width: u32, height: u32, fill: [u8; 3]) -> Canvas {
        let pixels = fill
            .iter()
            .copied()
            .cycle()
            .take((width * height * 3) as usize)
            .collect();
        Canvas {
            width,
            height,
            pixels,
        }
    }

    fn put(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = ((y * self.width + x) * 3) as usize;
            self.pixels[i..i + 3].copy_from_slice(&rgb);
        }
    }

    /// Draws an RGB image (`w*h*3` bytes) with its top-left at (x, y), each pixel `scale`
    /// times larger (nearest neighbour, so pixels stay honest).
    pub fn blit(&mut self, x: u32, y: u32, w: u32, h: u32, rgb: &[u8], scale: u32) {
        for sy in 0..h * scale {
            for sx in 0..w * scale {
                let i = (((sy / scale) * w + sx / scale) * 3) as usize;
                self.put(x + sx, y + sy, [rgb[i], rgb[i + 1], rgb[i + 2]]);
            }
        }
    }

    /// Writes one line of text with its top-left at (x, y).
    pub fn text(&mut self, x: u32, y: u32, s: &str, scale: u32, rgb: [u8; 3]) {
        for (k, c) in s.chars().enumerate() {
            let rows = glyph(c);
            for (r, bits) in rows.iter().enumerate() {
                for b in 0..3u32 {
                    if bits & (4 >> b) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                let px = x + (k as u32 * CHAR_W + b) * scale + dx;
                                self.put(px, y + r as u32 * scale + dy, rgb);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes text wrapped at word boundaries to `width` pixels; returns the lines used.
    pub fn text_wrapped(
        &mut self,
        x: u32,
        y: u32,
        s: &str,
        width: u32,
        scale: u32,
        rgb: [u8; 3],
    ) -> u32 {
        let lines = wrap(s, (width / (CHAR_W * scale)).max(1) as usize);
        for (i, line) in lines.iter().enumerate() {
            self.text(x, y + i as u32 * LINE_H * scale, line, scale, rgb);
        }
        lines.len() as u32
    }

    /// Encodes as PNG, writing through a temporary file so a crash never leaves half a picture.
    pub fn save(&self, path: &Path) -> Result<(), image::ImageError> {
        let img = image::RgbImage::from_raw(self.width, self.height, self.pixels.clone())
            .expect("canvas size");
        let tmp = path.with_extension("png.tmp");
        img.save_with_format(&tmp, image::ImageFormat::Png)?;
        std::fs::rename(&tmp, path).map_err(image::ImageError::IoError)
    }

    /// The PNG bytes.
    pub fn to_png(&self) -> Vec<u8> {
        let img = image::RgbImage::from_raw(self.width, self.height, self.pixels.clone())
            .expect("canvas size");
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .expect("PNG encoding into memory cannot fail");
        out.into_inner()
    }
}

/// Splits text into lines of at most `chars` characters, breaking at spaces where possible.
pub fn wrap(s: &str, chars: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in s.split_whitespace() {
        let mut word = word.to_owned();
        while word.chars().count() > chars {
            let head: String = word.chars().take(chars).collect();
            word = word.chars().skip(chars).collect();
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            lines.push(head);
        }
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > chars {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Converts images `[n, 3, h, w]` in [-1, 1] into RGB byte buffers.
pub fn tensor_to_rgb(images: &Tensor) -> Vec<Vec<u8>> {
    let images = images
        .detach()
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float);
    let bytes = ((images + 1.0) * 127.5)
        .clamp(0.0, 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous();
    let n = bytes.size()[0];
    (0..n)
        .map(|i| {
            let t = bytes.get(i).flatten(0, -1);
            Vec::<u8>::try_from(&t).expect("uint8 tensor")
        })
        .collect()
}

/// Lays out images `[n, 3, h, w]` (in [-1, 1]) in a grid of `cols` columns, each scaled up
/// `scale` times, with an optional label line above each row.
pub fn image_grid(images: &Tensor, cols: u32, scale: u32, row_labels: &[String]) -> Canvas {
    let size = images.size();
    let (n, h, w) = (size[0] as u32, size[2] as u32, size[3] as u32);
    let rows = n.div_ceil(cols);
    let pad = 2;
    let label_h = if row_labels.is_empty() { 0 } else { LINE_H + 2 };
    let cell_w = w * scale + pad;
    let cell_h = h * scale + pad + label_h;
    let mut canvas = Canvas::new(cols * cell_w + pad, rows * cell_h + pad, [255, 255, 255]);
    for (i, rgb) in tensor_to_rgb(images).iter().enumerate() {
        let (r, c) = (i as u32 / cols, i as u32 % cols);
        let y = pad + r * cell_h;
        if c == 0 {
            if let Some(label) = row_labels.get(r as usize) {
                canvas.text(pad, y, label, 1, [40, 40, 40]);
            }
        }
        canvas.blit(pad + c * cell_w, y + label_h, w, h, rgb, scale);
    }
    canvas
}
