//! Plume's StyleGAN2 computes the same function as the reference (rosinality's `model.py` at
//! the commit `tests/fixtures/stylegan2-reference/README.md` names): perturbed reference
//! weights, imported by name, reproduce every stored output to 1e-4, with both modulated-conv
//! paths. The CLI import of the same file gives a checkpoint every later job can load.

mod common;

use plume_worker::nn::checkpoint::Checkpoint;
use plume_worker::nn::layers::ModConvImpl;
use plume_worker::stylegan::discriminator::Discriminator;
use plume_worker::stylegan::generator::{Generator, NoiseMode};
use plume_worker::stylegan::import::{infer_config, load_into, read_state_dict};
use plume_worker::stylegan::pretrain::load_generator;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stylegan2-reference")
        .join(name)
}

fn cases() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture("cases.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn assert_close(name: &str, ours: &Tensor, reference: &Tensor) {
    assert_eq!(ours.size(), reference.size(), "{name}: shape");
    let err = (ours - reference).abs().max().double_value(&[]);
    let scale = reference.abs().max().double_value(&[]);
    eprintln!("{name}: max |diff| {err:.2e} (max |ref| {scale:.3})");
    assert!(err <= 1e-4, "{name}: max |diff| {err:e} > 1e-4");
}

/// `plume-worker import stylegan2 --from rosinality INPUT --out OUT`.
fn import_cli(input: &Path, out: &Path) -> std::process::Output {
    common::worker()
        .args(["import", "stylegan2", "--from", "rosinality"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn reference_generator() -> (VarStore, Generator) {
    let path = fixture("generator.safetensors");
    let sd = read_state_dict(&path).unwrap();
    let cfg = infer_config(&path, &sd).unwrap();
    assert_eq!(
        (cfg.resolution, cfg.z_dim, cfg.w_dim, cfg.mapping_layers),
        (32, 128, 128, 2)
    );
    assert_eq!((cfg.channels(4), cfg.channels(32)), (64, 64));
    let vs = VarStore::new(Device::Cpu);
    let mut g = Generator::new(&vs.root(), &cfg);
    load_into(&path, &sd, &vs).unwrap();
    g.noise = NoiseMode::Fixed;
    (vs, g)
}

#[test]
fn generator_and_discriminator_match_the_reference_outputs() {
    let c = cases();
    let (_vs, mut g) = reference_generator();
    tch::no_grad(|| {
        g.w_avg.shallow_clone().copy_(&c["w_avg"].view([-1]));
        assert_close("w = mapping(z)", &g.mapping.forward(&c["z"]), &c["w"]);
        for imp in [ModConvImpl::Grouped, ModConvImpl::Batched] {
            g.modconv = imp;
            let w = g.mapping.forward(&c["z"]);
            let w2 = g.mapping.forward(&c["z2"]);
            assert_close(
                &format!("img_plain ({imp:?})"),
                &g.generate(&c["z"], 1.0),
                &c["img_plain"],
            );
            assert_close(
                &format!("img_trunc ({imp:?})"),
                &g.generate(&c["z"], 0.7),
                &c["img_trunc"],
            );
            assert_close(
                &format!("img_mix ({imp:?})"),
                &g.synthesis(&g.mix(&w, &w2, 3)),
                &c["img_mix"],
            );
            assert_close(
                &format!("img_w ({imp:?})"),
                &g.synthesis(&g.broadcast(&c["w"])),
                &c["img_w"],
            );
        }
    });

    let path = fixture("discriminator.safetensors");
    let sd: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect();
    let vs = VarStore::new(Device::Cpu);
    let d = Discriminator::new(&vs.root(), &g.cfg);
    let mut loaded = 0;
    for (name, var) in vs.variables() {
        let src = sd
            .get(&name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"));
        assert_eq!(src.size(), var.size(), "{name}");
        tch::no_grad(|| var.shallow_clone().copy_(src));
        loaded += 1;
    }
    // Every fixture tensor is either loaded or a blur kernel (a constant in Plume).
    let kernels = sd.keys().filter(|k| k.ends_with(".kernel")).count();
    assert_eq!(loaded + kernels, sd.len(), "D variables vs fixture keys");
    tch::no_grad(|| {
        assert_close(
            "d_plain = D(img_plain)",
            &d.forward(&c["img_plain"]),
            &c["d_plain"].view([-1]),
        );
        assert_close(
            "d_real = D(real)",
            &d.forward(&c["real"]),
            &c["d_real"].view([-1]),
        );
    });
}

#[test]
fn cli_import_writes_a_generator_checkpoint_and_refuses_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gen.safetensors");
    let o = import_cli(&fixture("generator.safetensors"), &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = Checkpoint::load(&out).unwrap();
    let (_vs, g) = load_generator(&ckpt, Device::Cpu).unwrap();
    let c = cases();
    tch::no_grad(|| {
        assert_close(
            "imported img_w",
            &g.synthesis(&g.broadcast(&c["w"])),
            &c["img_w"],
        );
        // w_avg is the mapping network's mean (the fixture's w_avg is an arbitrary truncation
        // target, not a mean): check against an independent estimate.
        tch::manual_seed(99);
        let w = g.mapping.forward(&Tensor::randn(
            [20_000, 128],
            (tch::Kind::Float, Device::Cpu),
        ));
        let gap = (&g.w_avg - w.mean_dim(0, false, None))
            .abs()
            .max()
            .double_value(&[]);
        let spread = w.std(true).double_value(&[]);
        assert!(gap < 0.05 * spread, "w_avg off by {gap} (w std {spread})");
    });

    // A rosinality training checkpoint (`.pt` holding g, d, g_ema and argparse args) is read
    // through the venv's torch and gives the same generator.
    let venv = std::env::var("PLUME_VENV")
        .unwrap_or_else(|_| format!("{}/../.venv", env!("CARGO_MANIFEST_DIR")));
    let pt = tmp.path().join("550000.pt");
    let made = std::process::Command::new(format!("{venv}/bin/python"))
        .arg("-c")
        .arg("import argparse, sys, torch; from safetensors.torch import load_file; g = load_file(sys.argv[1]); torch.save({'g': g, 'g_ema': g, 'd': {}, 'args': argparse.Namespace(size=32)}, sys.argv[2])")
        .arg(fixture("generator.safetensors"))
        .arg(&pt)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let from_pt = tmp.path().join("from-pt.safetensors");
    let o = import_cli(&pt, &from_pt);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_vs, g_pt) = load_generator(&Checkpoint::load(&from_pt).unwrap(), Device::Cpu).unwrap();
    tch::no_grad(|| {
        assert_close(
            "img_w imported from .pt",
            &g_pt.synthesis(&g_pt.broadcast(&c["w"])),
            &c["img_w"],
        )
    });

    // Bad inputs: a clear error naming the problem, and no output file.
    let truncated = tmp.path().join("truncated.safetensors");
    let bytes = std::fs::read(fixture("generator.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let wrong_shape = tmp.path().join("wrong.safetensors");
    let missing = tmp.path().join("missing.safetensors");
    let mut sd = read_state_dict(&fixture("generator.safetensors")).unwrap();
    sd.insert(
        "convs.3.conv.weight".into(),
        Tensor::zeros([1, 64, 64, 1, 1], (tch::Kind::Float, Device::Cpu)),
    );
    Tensor::write_safetensors(
        &sd.iter().map(|(k, v)| (k.as_str(), v)).collect::<Vec<_>>(),
        &wrong_shape,
    )
    .unwrap();
    sd.remove("convs.3.conv.weight");
    Tensor::write_safetensors(
        &sd.iter().map(|(k, v)| (k.as_str(), v)).collect::<Vec<_>>(),
        &missing,
    )
    .unwrap();
    for (input, needle) in [
        (truncated, "truncated"),
        (
            wrong_shape,
            "`convs.3.conv.weight` has shape [1, 64, 64, 1, 1], expected [1, 64, 64, 3, 3]",
        ),
        (
            missing,
            "missing key `convs.3.conv.weight` (expected shape [1, 64, 64, 3, 3])",
        ),
        (
            fixture("discriminator.safetensors"),
            "not a rosinality StyleGAN2 generator",
        ),
    ] {
        let out = tmp.path().join("bad.safetensors");
        let o = import_cli(&input, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}: accepted", input.display());
        assert!(err.contains(needle), "{}: {err}", input.display());
        assert!(!out.exists(), "{}: wrote an output", input.display());
    }
}
