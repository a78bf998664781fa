//! Probes of generator training regimes other than `pretrain-generator`'s (issue 10), scored
//! exactly as `pretrain-generator` scores itself (judge-FID, precision/recall, colour
//! coverage, facing over 1000 samples against 1000 test images), with a sample grid per
//! evaluation. None of them reached the targets; they are kept so that the numbers in
//! `experiments/results/2026-11-27-generator.md` §8 can be reproduced.
//!
//! `cargo run --release -p plume-worker --example regime_probes -- MODE DATA JUDGE STEPS EVAL_EVERY OUT_PREFIX [key=value ...]`
//!
//! - `imle` (`k`=8, `lr`=0.0025): implicit maximum likelihood (Li & Malik 2018). Each real
//!   image is matched to the nearest (pixel L2) of `k` x batch fresh samples and G is pulled
//!   towards it from that sample's latent: mode covering by construction.
//! - `vae` (`beta`=1, `rec`=1, `lr`=0.0025, `adv`=0): G as the decoder of a VAE (a conv
//!   encoder gives z, then mapping and synthesis); `beta` weighs the KL per 3072 pixel values.
//!   `adv`=1 adds the non-saturating loss on prior samples and trains D (VAE-GAN).
//! - `aux` (`lambda`=1, `lr`=0.0025, `batch`=16, `beta1`=0, `gamma`=5, `ema`=5000,
//!   `device`=cpu): the GAN regime plus an attribute head on D's features, trained on the
//!   reals' labels, and a CatGAN term for G: each fake should read as one value per attribute
//!   group (low conditional entropy) while the batch spreads over the values (high marginal
//!   entropy). `lambda`=0 is the plain regime (the control); `beta1` sets Adam's first moment;
//!   `ms` > 0 adds the mode-seeking term of MSGAN (Mao et al. 2019) with that weight.
//! - `cond` (`lr`=0.0025, `batch`=16, `gamma`=5, `ema`=5000, `ch`=64): G and D conditioned
//!   on the attribute labels as in StyleGAN2-ADA (G's mapping reads half z, half an embedding
//!   of the one-hot labels; D adds a projection term); fakes and samples take the labels of
//!   random training images, so samples follow the data's label distribution.
//! - `agan` (`rec`=10, `code`=1, `recd`=1, `lr`=0.0025, `gamma`=5): α-GAN (Rosca et al.
//!   2017): the GAN regime plus an encoder trained with G to reconstruct the reals (pixel L1,
//!   weight `rec`), a code discriminator that holds the encoder's codes to the prior, and
//!   reconstructions shown to D as fakes.
//! - `dcgan` (`batch`=64): a plain DCGAN (transposed convs with batch norm, Adam 2e-4 and
//!   beta1 0.5), not a StyleGAN2: whether a simple GAN does better on these birds.

use anyhow::Context;
use plume_jobs::AugmentConfig;
use plume_worker::dataset::{Dataset, Partition};
use plume_worker::nn::adam::Adam;
use plume_worker::nn::layers::lrelu;
use plume_worker::nn::{named_vars, set_requires_grad, shallow, trainable_vars};
use plume_worker::stylegan::generator::Generator;
use plume_worker::stylegan::pretrain::Gan;
use plume_worker::stylegan::scoring::{self, JudgeForMetrics};
use plume_worker::stylegan::{augment, loss, NetworkConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::nn::{self, Module, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

mod adversarial;
mod dcgan;
mod harness;
mod likelihood;

use adversarial::{agan, aux, cond};
use dcgan::dcgan;
use harness::*;
use likelihood::{imle, vae};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, dir, judge, steps, every, out, rest @ ..] = &args[..] else {
        anyhow::bail!(
            "usage: regime_probes imle|vae|aux|cond|agan|dcgan DATA JUDGE STEPS EVAL_EVERY OUT_PREFIX [key=value ...]"
        );
    };
    let opts: HashMap<String, String> = rest
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{kv}: expected key=value"))
        })
        .collect::<anyhow::Result<_>>()?;
    let device = plume_worker::parse_device(opts.get("device").map_or("cpu", |d| d.as_str()))
        .map_err(anyhow::Error::msg)?;
    let ds = Dataset::open(&PathBuf::from(dir))?;
    let train = ds.partition(Partition::Train);
    let images = ds.load_images(&train, 32)?.to_device(device);
    let labels = ds.label_tensor(&train).to_device(device);
    let test = ds
        .load_images(&ds.partition(Partition::Test), 32)?
        .to_device(device);
    let judge = plume_worker::judge::train::load(&PathBuf::from(judge), "judge", device)?;
    let h = Harness {
        judge: JudgeForMetrics::new(judge, &test, 1000),
        ds,
        images,
        labels,
        device,
        steps: steps.parse()?,
        every: every.parse()?,
        out: out.clone(),
        opts,
        started: Instant::now(),
    };
    match mode.as_str() {
        "imle" => imle(&h),
        "vae" => vae(&h),
        "aux" => aux(&h),
        "dcgan" => dcgan(&h),
        "cond" => cond(&h),
        "agan" => agan(&h),
        other => anyhow::bail!("unknown mode {other:?}: imle, vae, aux, cond, agan or dcgan"),
    }
}
