//! Probe: a plain DCGAN (Radford et al. 2016: transposed convs with batch norm, Adam 2e-4,
//! beta1 0.5, non-saturating loss) on the same data and judge as `pretrain-generator`, as a
//! reference for what a simple GAN learns on these birds in a CPU budget. Not a Plume
//! generator (it has no W space); it only tells a regime problem from a data problem.
//!
//! `cargo run --release -p plume-worker --example dcgan_probe -- DATA JUDGE STEPS BATCH EVAL_EVERY OUT_PREFIX`

use plume_worker::dataset::{Dataset, Partition};
use plume_worker::stylegan::{augment, metrics, pretrain};
use std::path::PathBuf;
use std::time::Instant;
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const Z: i64 = 128;

fn generator(p: nn::Path) -> impl ModuleT {
    let up = |p: &nn::Path, i, o| {
        nn::conv_transpose2d(
            p,
            i,
            o,
            4,
            nn::ConvTransposeConfig {
                stride: 2,
                padding: 1,
                bias: false,
                ..Default::default()
            },
        )
    };
    nn::seq_t()
        .add(nn::linear(&p / "fc", Z, 256 * 16, Default::default()))
        .add_fn(|x| x.view([-1, 256, 4, 4]))
        .add(nn::batch_norm2d(&p / "bn0", 256, Default::default()))
        .add_fn(|x| x.relu())
        .add(up(&(&p / "up1"), 256, 128))
        .add(nn::batch_norm2d(&p / "bn1", 128, Default::default()))
        .add_fn(|x| x.relu())
        .add(up(&(&p / "up2"), 128, 64))
        .add(nn::batch_norm2d(&p / "bn2", 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(up(&(&p / "up3"), 64, 3))
        .add_fn(|x| x.tanh())
}

fn discriminator(p: nn::Path) -> impl ModuleT {
    let down = |p: &nn::Path, i, o| {
        nn::conv2d(
            p,
            i,
            o,
            4,
            nn::ConvConfig {
                stride: 2,
                padding: 1,
                ..Default::default()
            },
        )
    };
    nn::seq_t()
        .add(down(&(&p / "c1"), 3, 64))
        .add_fn(|x| x.leaky_relu())
        .add(down(&(&p / "c2"), 64, 128))
        .add(nn::batch_norm2d(&p / "bn2", 128, Default::default()))
        .add_fn(|x| x.leaky_relu())
        .add(down(&(&p / "c3"), 128, 256))
        .add(nn::batch_norm2d(&p / "bn3", 256, Default::default()))
        .add_fn(|x| x.leaky_relu())
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(&p / "out", 256 * 16, 1, Default::default()))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, judge, steps, batch, every, out] = &args[..] else {
        anyhow::bail!("usage: dcgan_probe DATA JUDGE STEPS BATCH EVAL_EVERY OUT_PREFIX");
    };
    let (steps, b, every): (i64, i64, i64) = (steps.parse()?, batch.parse()?, every.parse()?);
    let device = Device::Cpu;
    tch::manual_seed(1);
    let ds = Dataset::open(&PathBuf::from(dir))?;
    let images = ds.load_images(&ds.partition(Partition::Train), 32)?;
    let n = images.size()[0];
    let test = ds.load_images(&ds.partition(Partition::Test), 32)?;
    let judge = plume_worker::judge::train::load(&PathBuf::from(judge), "judge", device)?;
    let test_reading = metrics::read(&judge, &test.narrow(0, 0, 1000));
    let g_vs = nn::VarStore::new(device);
    let g = generator(g_vs.root());
    let d_vs = nn::VarStore::new(device);
    let d = discriminator(d_vs.root());
    let adam = nn::Adam {
        beta1: 0.5,
        ..Default::default()
    };
    let mut g_opt = adam.build(&g_vs, 2e-4)?;
    let mut d_opt = adam.build(&d_vs, 2e-4)?;
    let t0 = Instant::now();
    for step in 0..=steps {
        if step % every == 0 {
            tch::manual_seed(0xF1D);
            let fake = tch::no_grad(|| {
                g.forward_t(&Tensor::randn([1000, Z], (Kind::Float, device)), false)
            });
            let reading = metrics::read(&judge, &fake);
            let shown: Vec<String> =
                pretrain::generator_metrics(&reading, &test_reading, &ds.groups)
                    .iter()
                    .filter(|(k, _)| !k.contains("/coverage/") && !k.contains("/top_share/"))
                    .map(|(k, v)| format!("{}={v:.3}", k.trim_start_matches("gen/")))
                    .collect();
            println!(
                "step {step} ({:.0} s): {}",
                t0.elapsed().as_secs_f64(),
                shown.join(" ")
            );
            plume_worker::picture::image_grid(&fake.narrow(0, 0, 64), 8, 4, &[])
                .save(&PathBuf::from(format!("{out}-{step}.png")))?;
            tch::manual_seed(1000 + step);
        }
        if step == steps {
            break;
        }
        let idx = Tensor::randint(n, [b], (Kind::Int64, device));
        let real = augment::random_xflip(&images.index_select(0, &idx));
        let z = Tensor::randn([b, Z], (Kind::Float, device));
        let fake = g.forward_t(&z, true);
        let ld = (-d.forward_t(&real, true)).softplus().mean(None)
            + d.forward_t(&fake.detach(), true).softplus().mean(None);
        d_opt.zero_grad();
        ld.backward();
        d_opt.step();
        let lg = (-d.forward_t(&fake, true)).softplus().mean(None);
        g_opt.zero_grad();
        lg.backward();
        g_opt.step();
        if step % 200 == 0 {
            println!(
                "step {step}: loss_d {:.3} loss_g {:.3}",
                ld.double_value(&[]),
                lg.double_value(&[])
            );
        }
    }
    Ok(())
}
