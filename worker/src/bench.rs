//! `plume-worker bench`: performance tables. Numbers here, not in timed tests.

use crate::nn::layers::flops;
use crate::stylegan::pretrain::{Gan, PretrainConfig};
use crate::stylegan::NetworkConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt::Write as _;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Peak resident memory of this process in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Resets the peak so each configuration reports its own (Linux `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Measured ceilings: sgemm 1024^3 and a 3x3, 64-channel conv at 32x32, batch 16.
fn ceilings(device: Device) -> (f64, f64) {
    let opts = (Kind::Float, device);
    let a = Tensor::randn([1024, 1024], opts);
    let b = Tensor::randn([1024, 1024], opts);
    let time = |f: &dyn Fn() -> Tensor, flop: f64| {
        let _ = f();
        let t = Instant::now();
        let reps = 5;
        for _ in 0..reps {
            let _ = f().sum(None).double_value(&[]);
        }
        flop * reps as f64 / t.elapsed().as_secs_f64() / 1e9
    };
    let gemm = time(&|| a.matmul(&b), 2.0 * 1024f64.powi(3));
    let x = Tensor::randn([16, 64, 32, 32], opts);
    let w = Tensor::randn([64, 64, 3, 3], opts);
    let conv = time(
        &|| x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1),
        2.0 * 16.0 * 64.0 * 64.0 * 9.0 * 1024.0,
    );
    (gemm, conv)
}

/// G+D training step at 32 and 64 px, batch 16 and 32, for the CPU network config.
///
/// FLOPs are model FLOPs: layers count their forward multiply-adds while one G forward and one
/// D forward run; a plain step (no lazy regulariser) is then 4 G-forwards (G forward+backward
/// in G's step, a no-grad G forward in D's step) plus 8 D-forwards (D forward + input
/// gradient in G's step; forward + weight and input gradients on real and fake in D's).
pub fn generator(steps: usize, device: Device) -> anyhow::Result<String> {
    let mut out = String::new();
    let (gemm, conv) = ceilings(device);
    let _ = writeln!(out, "device {device:?}, {} threads; measured ceilings: sgemm {gemm:.1} GFLOP/s, 3x3 conv (64 ch, 32 px) {conv:.1} GFLOP/s", tch::get_num_threads());
    let _ = writeln!(
        out,
        "{:>4} {:>5} {:>7} {:>9} {:>10} {:>12} {:>10} {:>9} {:>13}",
        "res",
        "batch",
        "augment",
        "step ms",
        "images/s",
        "GFLOP/step",
        "GFLOP/s",
        "peak MiB",
        "vs conv ceil"
    );
    let batches: &[i64] = match device {
        Device::Cpu => &[16, 32],
        _ => &[32, 128],
    };
    for res in [32u32, 64] {
        for &batch in batches {
            for augment in [false, true] {
                let step = GeneratorStep {
                    res,
                    batch,
                    augment,
                };
                out += &step.measure(steps, device, conv)?;
            }
        }
    }
    Ok(out)
}

/// One row of the generator bench: a plain GAN step (no lazy regulariser), with or without
/// DiffAugment on every D input.
struct GeneratorStep {
    res: u32,
    batch: i64,
    augment: bool,
}

impl GeneratorStep {
    /// Times `steps` steps (after two warm-up steps) and formats the row; `conv` is the
    /// machine's 3x3-conv ceiling in GFLOP/s.
    fn measure(&self, steps: usize, device: Device, conv: f64) -> anyhow::Result<String> {
        let (res, batch) = (self.res, self.batch);
        let net = NetworkConfig {
            resolution: res,
            ..NetworkConfig::default()
        };
        let mut cfg: PretrainConfig = plume_jobs::yaml::from_str(&format!(
            "dataset: {{kind: synthetic-birds, images: 1, resolution: {res}, seed: 0}}\nsteps: 1\nbatch: {batch}\nr1_gamma: 0"
        ))?;
        cfg.network = net.clone();
        if !self.augment {
            cfg.augment.translation = 0.0;
            cfg.augment.cutout = 0.0;
        }
        reset_peak_rss();
        let mut gan = Gan::new(&net, cfg.lr, 16, 4, false, 1, device);
        let real = Tensor::randn([batch, 3, res as i64, res as i64], (Kind::Float, device))
            .clamp(-1.0, 1.0);
        let (fg, fd) = tch::no_grad(|| {
            let z = Tensor::randn([batch, net.z_dim], (Kind::Float, device));
            flops::start();
            let img = gan.g.generate(&z, 1.0);
            let fg = flops::stop();
            flops::start();
            let _ = gan.d.forward(&img);
            (fg, flops::stop())
        });
        let step_flop = 4.0 * fg + 8.0 * fd;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for s in 1..=2 {
            gan.train_step(&cfg, s, &real, &mut rng);
        }
        let t = Instant::now();
        for s in 0..steps {
            gan.train_step(&cfg, 3 + s as i64, &real, &mut rng);
        }
        if let Device::Cuda(_) = device {
            tch::Cuda::synchronize(0);
        }
        let secs = t.elapsed().as_secs_f64() / steps as f64;
        let gflops = step_flop / secs / 1e9;
        Ok(format!(
            "{:>4} {:>5} {:>7} {:>9.1} {:>10.1} {:>12.2} {:>10.1} {:>9.0} {:>12.2}x\n",
            res,
            batch,
            if self.augment { "on" } else { "off" },
            secs * 1e3,
            batch as f64 / secs,
            step_flop / 1e9,
            gflops,
            peak_rss_mib(),
            conv / gflops
        ))
    }
}

/// BERT sentence-encoding throughput (captions/s) at batch 1 and 64 with the default
/// weights, and one training step (forward + backward + Adam) of each implemented method at
/// batch 16 against the CPU generator config (random weights: the cost does not depend on
/// them) and the default critic.
pub fn text(device: Device) -> anyhow::Result<String> {
    let dir = crate::text::bert::default_model_dir().ok_or_else(|| {
        anyhow::anyhow!("no BERT weights: run scripts/setup or set PLUME_BERT_DIR")
    })?;
    let enc = crate::text::bert::TextEncoder::load(&dir, device, 64)?;
    let captions: Vec<String> = (0..64)
        .map(|i| {
            let (attrs, _, _) = crate::dataset::render::bird_for(1, i);
            crate::dataset::synth::caption(
                crate::dataset::vocab::PHRASINGS[i as usize % 12],
                &attrs,
            )
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "BERT {} ({} layers, hidden {}) on {device:?}, {} threads",
        dir.display(),
        enc.bert.config.num_hidden_layers,
        enc.bert.config.hidden_size,
        tch::get_num_threads()
    );
    let _ = writeln!(
        out,
        "{:>6} {:>12} {:>14}",
        "batch", "ms/batch", "captions/s"
    );
    for batch in [1usize, 64] {
        let refs: Vec<&str> = captions.iter().take(batch).map(String::as_str).collect();
        tch::no_grad(|| -> anyhow::Result<()> {
            let _ = enc.embed_sentences(&refs)?;
            let reps = if batch == 1 { 50 } else { 10 };
            let t = Instant::now();
            for _ in 0..reps {
                let _ = enc
                    .embed_sentences(&refs)?
                    .sum(Kind::Float)
                    .double_value(&[]);
            }
            let secs = t.elapsed().as_secs_f64() / reps as f64;
            let _ = writeln!(
                out,
                "{:>6} {:>12.2} {:>14.1}",
                batch,
                secs * 1e3,
                batch as f64 / secs
            );
            Ok(())
        })?;
    }
    out.push_str(&method_steps(&enc, &captions, device)?);
    Ok(out)
}

fn method_steps(
    enc: &crate::text::bert::TextEncoder,
    captions: &[String],
    device: Device,
) -> anyhow::Result<String> {
    use crate::text::losses::Example;
    use crate::text::methods::Method;
    let net = NetworkConfig::default();
    let mut g_vs = tch::nn::VarStore::new(device);
    let g = crate::stylegan::generator::Generator::new(&g_vs.root(), &net);
    g_vs.freeze();
    let critic = untrained_critic(device);
    let b = 16i64;
    let images = Tensor::rand([b, 3, 32, 32], (Kind::Float, device)) * 2.0 - 1.0;
    let w = Tensor::randn([b, net.w_dim], (Kind::Float, device));
    let labels = Tensor::zeros([b, 7], (Kind::Int64, device));
    let masks = Tensor::randint(10, [b, 32, 32], (Kind::Int64, device));
    let class_means = crate::text::methods::class_means(&w, &labels);
    let ex = Example {
        images: &images,
        w: &w,
        captions: captions
            .iter()
            .take(b as usize)
            .map(String::as_str)
            .collect(),
        labels: &labels,
        masks: Some(&masks),
        class_means: Some(&class_means),
    };
    let mut out = format!(
        "\n{:<16} {:>12}   (batch {b}, 32 px generator, w_dim {}, all BERT layers trained)\n",
        "method", "step ms", net.w_dim
    );
    for method in [
        Method::Weighted,
        Method::Reconstruction,
        Method::Contrastive,
        Method::VisualGrounding,
    ] {
        let ms = method_step_ms(method, enc, &g, &critic, &ex, device)?;
        let _ = writeln!(out, "{:<16} {:>12.1}", format!("{method:?}"), ms);
    }
    Ok(out)
}

/// A frozen, untrained critic of the synthetic dataset's shape (7 groups, 10 parts), 32 px.
fn untrained_critic(device: Device) -> crate::judge::train::Trained {
    let mut vs = tch::nn::VarStore::new(device);
    let groups = [15i64, 15, 15, 15, 3, 3, 4];
    let net = crate::judge::model::JudgeNet::new(&vs.root(), &Default::default(), &groups, 10);
    vs.freeze();
    crate::judge::train::Trained {
        vs,
        net,
        resolution: 32,
    }
}

/// Mean ms of one training step of `method` with default weights (after one warm-up step).
fn method_step_ms(
    method: crate::text::methods::Method,
    enc: &crate::text::bert::TextEncoder,
    g: &crate::stylegan::generator::Generator,
    critic: &crate::judge::train::Trained,
    ex: &crate::text::losses::Example,
    device: Device,
) -> anyhow::Result<f64> {
    use crate::text::losses::{loss_terms, total_loss, Recipe};
    use crate::text::methods::{EditSpec, LossWeights, Nets, StyleHeads};
    let hidden = enc.bert.config.hidden_size;
    let w_dim = g.cfg.w_dim;
    let heads = StyleHeads::for_method(
        method,
        device,
        hidden,
        w_dim,
        Some(critic),
        EditSpec::default(),
    )?;
    let nets = Nets {
        enc,
        heads: &heads,
        g,
        critic: Some(critic),
    };
    let mut params = crate::nn::trainable_vars(&enc.vs);
    params.extend(crate::nn::trainable_vars(&heads.vs));
    let mut opt = crate::nn::adam::Adam::new(params, 1e-5, 0.9, 0.999, 1e-8);
    let recipe = Recipe::new(method, LossWeights::default());
    let mut step = || -> anyhow::Result<()> {
        let terms = loss_terms(&recipe, &nets, ex)?;
        opt.zero_grad();
        total_loss(&terms)
            .expect("default weights are non-zero")
            .backward();
        opt.step();
        Ok(())
    };
    step()?;
    let reps = 3;
    let t = Instant::now();
    for _ in 0..reps {
        step()?;
    }
    Ok(t.elapsed().as_secs_f64() / reps as f64 * 1e3)
}
