//! A plain DCGAN, as a reference for what a simple GAN does on these birds.

use super::*;

pub(super) fn dcgan(h: &Harness) -> anyhow::Result<()> {
    const Z: i64 = 128;
    let (b, device) = (h.opt("batch", 64.0)? as i64, h.device);
    tch::manual_seed(1);
    let g_vs = nn::VarStore::new(device);
    let d_vs = nn::VarStore::new(device);
    let (gp, dp) = (g_vs.root(), d_vs.root());
    let up = |name: &str, i, o| {
        let config = nn::ConvTransposeConfig {
            stride: 2,
            padding: 1,
            bias: false,
            ..Default::default()
        };
        nn::conv_transpose2d(&gp / name, i, o, 4, config)
    };
    let bn = |p: &nn::Path, name: &str, c| nn::batch_norm2d(p / name, c, Default::default());
    let g = nn::seq_t()
        .add(nn::linear(&gp / "fc", Z, 256 * 16, Default::default()))
        .add_fn(|x| x.view([-1, 256, 4, 4]))
        .add(bn(&gp, "bn0", 256))
        .add_fn(|x| x.relu())
        .add(up("up1", 256, 128))
        .add(bn(&gp, "bn1", 128))
        .add_fn(|x| x.relu())
        .add(up("up2", 128, 64))
        .add(bn(&gp, "bn2", 64))
        .add_fn(|x| x.relu())
        .add(up("up3", 64, 3))
        .add_fn(|x| x.tanh());
    let down = |name: &str, i, o| {
        let config = nn::ConvConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        nn::conv2d(&dp / name, i, o, 4, config)
    };
    let d = nn::seq_t()
        .add(down("c1", 3, 64))
        .add_fn(|x| x.leaky_relu())
        .add(down("c2", 64, 128))
        .add(bn(&dp, "bn2", 128))
        .add_fn(|x| x.leaky_relu())
        .add(down("c3", 128, 256))
        .add(bn(&dp, "bn3", 256))
        .add_fn(|x| x.leaky_relu())
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(&dp / "out", 256 * 16, 1, Default::default()));
    let adam = nn::Adam {
        beta1: 0.5,
        ..Default::default()
    };
    let (mut g_opt, mut d_opt) = (adam.build(&g_vs, 2e-4)?, adam.build(&d_vs, 2e-4)?);
    for step in 0..=h.steps {
        if step % h.every == 0 {
            tch::manual_seed(0xF1D);
            let z = Tensor::randn([1000, Z], (Kind::Float, device));
            h.report(step, &tch::no_grad(|| g.forward_t(&z, false)))?;
        }
        if step == h.steps {
            break;
        }
        tch::manual_seed(1000 + step);
        let (real, _) = h.batch(b);
        let fake = g.forward_t(&Tensor::randn([b, Z], (Kind::Float, device)), true);
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
