//! The StyleGAN2 generator: mapping network f: z -> w and synthesis network g: w+ -> image
//! (constant 4x4 input, modulated/demodulated 3x3 convs with transposed-conv upsampling and
//! the [1, 3, 3, 1] blur, per-layer noise, skip toRGB).
//!
//! It computes the same function as rosinality's `model.py` `Generator`, and its variables
//! carry that module's `state_dict()` names and shapes (`style.1.weight`, `convs.0.conv.weight`,
//! `noises.noise_0`, ...): a rosinality checkpoint loads by name (`import`), and
//! `worker/tests/reference_parity.rs` checks the outputs against the reference fixture.

use super::NetworkConfig;
use crate::dataset::scene::{self, SceneStream};
use crate::nn::layers::{lrelu, upsample2, EqualLinear, ModConvImpl, ModulatedConv2d};
use plume_jobs::{MappingInput, SCENE_BLOCKS};
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// The mapping network: what turns a generator's input into w.
pub struct Mapping {
    form: MappingForm,
}

enum MappingForm {
    /// PixelNorm(z) through `mapping_layers` FC layers with lr multiplier 0.01 (rosinality's
    /// `style`; index 0 is the PixelNorm, so the layers are `style.1`, `style.2`, ...).
    Latent(Vec<EqualLinear>),
    /// A scene code to w, block by block: one embedding table per attribute group
    /// (`scene.group_<g>`, `[values, w_dim / 8]`: the one-hot picks a row) and a small MLP of
    /// the pose (`scene.pose.*`) for the last block. Changing one attribute changes only its
    /// block, so an edit of w is an exact sum.
    Scene {
        groups: Vec<(i64, i64, Tensor)>,
        pose: (i64, i64, Vec<EqualLinear>),
    },
}

impl Mapping {
    fn new(p: &Path, cfg: &NetworkConfig) -> Self {
        let form = match cfg.input {
            MappingInput::Latent => MappingForm::Latent(
                (0..cfg.mapping_layers)
                    .map(|i| {
                        EqualLinear::new(
                            p / "style" / format!("{}", i + 1),
                            if i == 0 { cfg.z_dim } else { cfg.w_dim },
                            cfg.w_dim,
                            0.01,
                            0.0,
                            true,
                        )
                    })
                    .collect(),
            ),
            MappingInput::Scene => {
                let block = cfg.w_dim / SCENE_BLOCKS;
                let (blocks, (pose_at, pose_dim)) = scene::layout();
                let p = p / "scene";
                let groups = blocks
                    .iter()
                    .enumerate()
                    .map(|(g, &(at, n))| {
                        let table = p.var(
                            &format!("group_{g}"),
                            &[n as i64, block],
                            Init::Randn {
                                mean: 0.0,
                                stdev: 1.0,
                            },
                        );
                        (at as i64, n as i64, table)
                    })
                    .collect();
                let hidden = 4 * block;
                let mlp = vec![
                    EqualLinear::new(&p / "pose" / "0", pose_dim as i64, hidden, 1.0, 0.0, true),
                    EqualLinear::new(&p / "pose" / "1", hidden, block, 1.0, 0.0, false),
                ];
                MappingForm::Scene {
                    groups,
                    pose: (pose_at as i64, pose_dim as i64, mlp),
                }
            }
        };
        Mapping { form }
    }

    /// `z: [B, z_dim]` (latent) or scene codes `[B, code_dim]` (scene) -> `w: [B, w_dim]`.
    pub fn forward(&self, input: &Tensor) -> Tensor {
        match &self.form {
            MappingForm::Latent(layers) => {
                let mut x = input * (input.square().mean_dim(1, true, None) + 1e-8).rsqrt();
                for l in layers {
                    x = l.forward(&x);
                }
                x
            }
            MappingForm::Scene {
                groups,
                pose: (at, n, mlp),
            } => {
                let mut blocks: Vec<Tensor> = groups
                    .iter()
                    .map(|(at, n, table)| input.narrow(1, *at, *n).matmul(table))
                    .collect();
                let mut x = input.narrow(1, *at, *n);
                for l in mlp {
                    x = l.forward(&x);
                }
                blocks.push(x);
                Tensor::cat(&blocks, 1)
            }
        }
    }
}

/// Where the per-layer noise comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseMode {
    /// Fresh N(0, 1) noise on every call (training; rosinality's `randomize_noise=True`).
    Random,
    /// The stored `noises.noise_i` buffers, so that G(w) is a function of w alone (every
    /// frozen use: inversion, text training, edits, the benchmark).
    Fixed,
}

/// Modulated conv + noise + bias + activation (rosinality's `StyledConv`).
struct StyledConv {
    conv: ModulatedConv2d,
    noise_strength: Tensor,
    bias: Tensor,
}

impl StyledConv {
    fn new(p: &Path, in_ch: i64, out_ch: i64, w_dim: i64, up: bool) -> Self {
        StyledConv {
            conv: ModulatedConv2d::new(p / "conv", in_ch, out_ch, 3, w_dim, true, up),
            noise_strength: (p / "noise").var("weight", &[1], Init::Const(0.0)),
            bias: (p / "activate").var("bias", &[out_ch], Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor, w: &Tensor, noise: Option<&Tensor>, imp: ModConvImpl) -> Tensor {
        let y = self.conv.forward(x, w, imp);
        let s = y.size();
        let noise = match noise {
            Some(n) => n.shallow_clone(),
            None => Tensor::randn([s[0], 1, s[2], s[3]], (Kind::Float, y.device())),
        };
        lrelu(&(y + noise * &self.noise_strength + self.bias.view([1, -1, 1, 1])))
    }
}

/// 1x1 modulated conv to RGB, without demodulation; adds the upsampled skip.
struct ToRgb {
    conv: ModulatedConv2d,
    bias: Tensor,
}

impl ToRgb {
    fn new(p: &Path, in_ch: i64, w_dim: i64) -> Self {
        ToRgb {
            conv: ModulatedConv2d::new(p / "conv", in_ch, 3, 1, w_dim, false, false),
            bias: p.var("bias", &[1, 3, 1, 1], Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor, w: &Tensor, skip: Option<&Tensor>, imp: ModConvImpl) -> Tensor {
        let y = self.conv.forward(x, w, imp) + &self.bias;
        match skip {
            Some(s) => y + upsample2(s),
            None => y,
        }
    }
}

/// The full generator. `w_avg` is the tracked mean of w (for truncation); it and the noise
/// buffers are stored but not trained.
pub struct Generator {
    /// Sizes.
    pub cfg: NetworkConfig,
    /// z -> w.
    pub mapping: Mapping,
    constant: Tensor,
    conv1: StyledConv,
    to_rgb1: ToRgb,
    /// Upsampling conv, conv, upsampling conv, conv, ... (rosinality's `convs`).
    convs: Vec<StyledConv>,
    /// One per resolution above 4 (rosinality's `to_rgbs`).
    to_rgbs: Vec<ToRgb>,
    /// `noises.noise_i`, one per styled conv, for [`NoiseMode::Fixed`].
    noises: Vec<Tensor>,
    /// Running mean of w.
    pub w_avg: Tensor,
    /// Which modulated-conv implementation to run.
    pub modconv: ModConvImpl,
    /// Random or stored noise.
    pub noise: NoiseMode,
}

impl Generator {
    /// Builds the generator's variables under `p`, initialised as rosinality does.
    pub fn new(p: &Path, cfg: &NetworkConfig) -> Self {
        let c4 = cfg.channels(4);
        let mut convs = Vec::new();
        let mut to_rgbs = Vec::new();
        let mut in_ch = c4;
        for l in 3..=cfg.log2_res() {
            let out = cfg.channels(1 << l);
            let i = convs.len();
            convs.push(StyledConv::new(
                &(p / "convs" / i),
                in_ch,
                out,
                cfg.w_dim,
                true,
            ));
            convs.push(StyledConv::new(
                &(p / "convs" / (i + 1)),
                out,
                out,
                cfg.w_dim,
                false,
            ));
            to_rgbs.push(ToRgb::new(&(p / "to_rgbs" / to_rgbs.len()), out, cfg.w_dim));
            in_ch = out;
        }
        // Buffers, not variables: drawn once at construction, never trained.
        let noises = (0..convs.len() as i64 + 1)
            .map(|i| {
                let side = 1i64 << ((i + 5) / 2);
                let t = (p / "noises").zeros_no_train(&format!("noise_{i}"), &[1, 1, side, side]);
                let _ = tch::no_grad(|| t.shallow_clone().normal_(0.0, 1.0));
                t
            })
            .collect::<Vec<_>>();
        let w_avg = p.zeros_no_train("w_avg", &[cfg.w_dim]);
        Generator {
            cfg: cfg.clone(),
            mapping: Mapping::new(p, cfg),
            constant: (p / "input").var(
                "input",
                &[1, c4, 4, 4],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            conv1: StyledConv::new(&(p / "conv1"), c4, c4, cfg.w_dim, false),
            to_rgb1: ToRgb::new(&(p / "to_rgb1"), c4, cfg.w_dim),
            convs,
            to_rgbs,
            noises,
            w_avg,
            modconv: ModConvImpl::Batched,
            noise: NoiseMode::Random,
        }
    }

    /// `n` inputs for the mapping network drawn from its prior with `seed`: z ~ N(0, I), or
    /// the scene codes of the renderer's random scenes (`SceneStream::Prior`).
    pub fn prior_inputs(&self, n: i64, seed: u64, device: tch::Device) -> Tensor {
        match self.cfg.input {
            MappingInput::Latent => {
                tch::manual_seed(seed as i64);
                Tensor::randn([n, self.cfg.z_dim], (Kind::Float, device))
            }
            MappingInput::Scene => {
                scene::codes(&SceneStream::Prior.scenes(seed, 0, n as usize)).to_device(device)
            }
        }
    }

    /// How many w vectors the synthesis network consumes (W+ has this many copies).
    pub fn num_ws(&self) -> i64 {
        self.convs.len() as i64 + 2
    }

    /// Truncation towards `w_avg`: `w_avg + psi (w - w_avg)`.
    pub fn truncate(&self, w: &Tensor, psi: f64) -> Tensor {
        if psi == 1.0 {
            return w.shallow_clone();
        }
        &self.w_avg + (w - &self.w_avg) * psi
    }

    /// Synthesis from `ws: [B, num_ws, w_dim]` to images `[B, 3, res, res]` (about [-1, 1]).
    pub fn synthesis(&self, ws: &Tensor) -> Tensor {
        let b = ws.size()[0];
        let w_at = |i: i64| ws.select(1, i);
        let noise = |i: usize| match self.noise {
            NoiseMode::Random => None,
            NoiseMode::Fixed => Some(&self.noises[i]),
        };
        let imp = self.modconv;
        let x = self.constant.expand([b, -1, -1, -1], false);
        let mut x = self.conv1.forward(&x, &w_at(0), noise(0), imp);
        let mut rgb = self.to_rgb1.forward(&x, &w_at(1), None, imp);
        for (i, to_rgb) in self.to_rgbs.iter().enumerate() {
            let k = 1 + 2 * i as i64;
            x = self.convs[2 * i].forward(&x, &w_at(k), noise(2 * i + 1), imp);
            x = self.convs[2 * i + 1].forward(&x, &w_at(k + 1), noise(2 * i + 2), imp);
            rgb = to_rgb.forward(&x, &w_at(k + 2), Some(&rgb), imp);
        }
        rgb
    }

    /// Broadcasts `w: [B, w_dim]` to `[B, num_ws, w_dim]`.
    pub fn broadcast(&self, w: &Tensor) -> Tensor {
        w.unsqueeze(1).expand([-1, self.num_ws(), -1], false)
    }

    /// Mapping input (z or scene codes) -> image, with optional truncation.
    pub fn generate(&self, z: &Tensor, psi: f64) -> Tensor {
        let w = self.truncate(&self.mapping.forward(z), psi);
        self.synthesis(&self.broadcast(&w))
    }

    /// Style mixing as rosinality's `inject_index`: the first `inject` of the `num_ws`
    /// latents from `w1`, the rest from `w2` (both `[B, w_dim]`).
    pub fn mix(&self, w1: &Tensor, w2: &Tensor, inject: i64) -> Tensor {
        let n = self.num_ws();
        Tensor::cat(
            &[
                self.broadcast(w1).narrow(1, 0, inject),
                self.broadcast(w2).narrow(1, inject, n - inject),
            ],
            1,
        )
    }
}
