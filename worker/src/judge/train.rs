//! Job `train-judge`: trains the critic (on the main training partition) and the judge (on
//! the judge's disjoint partition) side by side, and reports both on the test split.

use super::model::{JudgeNet, JudgeNetConfig};
use crate::dataset::OpenDataset;
use crate::dataset::{Dataset, Partition};
use crate::job::{step_loop, Cadence, CancelToken, Outcome, Reporter, Task, TrainingJob};
use crate::nn::adam::Adam;
use crate::nn::checkpoint::{self, Checkpoint};
use crate::nn::{named_vars, trainable_vars};
use plume_jobs::DatasetSpec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use plume_jobs::JudgeConfig;

/// One trained network with its store.
pub struct Trained {
    /// Holds the weights.
    pub vs: VarStore,
    /// The network.
    pub net: JudgeNet,
    /// Input resolution.
    pub resolution: i64,
}

fn build(device: Device, cfg: &JudgeNetConfig, groups: &[i64], parts: i64) -> (VarStore, JudgeNet) {
    let vs = VarStore::new(device);
    let net = JudgeNet::new(&vs.root(), cfg, groups, parts);
    (vs, net)
}

/// Loads the `judge` or the `critic` from a `train-judge` checkpoint, frozen.
pub fn load(path: &Path, which: &str, device: Device) -> anyhow::Result<Trained> {
    let ckpt = Checkpoint::load(path)?;
    ckpt.expect_kind("train-judge")?;
    let cfg: JudgeNetConfig = serde_json::from_str(ckpt.meta("judge.net")?)?;
    let groups: Vec<i64> = serde_json::from_str(ckpt.meta("judge.group_sizes")?)?;
    let parts: i64 = ckpt.meta("judge.parts")?.parse()?;
    let resolution: i64 = ckpt.meta("judge.resolution")?.parse()?;
    let (mut vs, net) = build(device, &cfg, &groups, parts);
    ckpt.restore(&format!("{which}."), &named_vars(&vs))?;
    vs.freeze();
    Ok(Trained {
        vs,
        net,
        resolution,
    })
}

/// Held-out quality of a network.
#[derive(Debug, Clone)]
pub struct Scores {
    /// Mean over groups of the share of labelled images whose value is predicted exactly.
    pub attr_accuracy: f64,
    /// Mean intersection-over-union over part labels (NaN without masks).
    pub seg_miou: f64,
    /// Accuracy per attribute group (NaN where no test image is labelled).
    pub per_group: Vec<f64>,
}

/// Scores a network on images/labels/masks already in memory.
pub fn score(net: &JudgeNet, images: &Tensor, labels: &Tensor, masks: Option<&Tensor>) -> Scores {
    tch::no_grad(|| {
        let n = images.size()[0];
        let groups = labels.size()[1];
        let mut correct = vec![0f64; groups as usize];
        let mut counted = vec![0f64; groups as usize];
        let parts = masks.map(|_| net.parts()).unwrap_or(0);
        let mut inter = vec![0f64; parts as usize];
        let mut union = vec![0f64; parts as usize];
        let chunk = 256;
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let x = images.narrow(0, start, len);
            let out = net.forward(&x);
            let pred = net.predict(&out.attr_logits).to_device(Device::Cpu);
            let lab = labels.narrow(0, start, len).to_device(Device::Cpu);
            for g in 0..groups {
                let l = lab.select(1, g);
                let valid = l.ge(0);
                correct[g as usize] += pred
                    .select(1, g)
                    .eq_tensor(&l)
                    .logical_and(&valid)
                    .sum(Kind::Float)
                    .double_value(&[]);
                counted[g as usize] += valid.sum(Kind::Float).double_value(&[]);
            }
            if let (Some(m), Some(logits)) = (masks, out.part_logits.as_ref()) {
                let truth = m.narrow(0, start, len).to_device(Device::Cpu);
                let p = logits.argmax(1, false).to_device(Device::Cpu);
                for k in 0..parts {
                    let (a, b) = (p.eq(k), truth.eq(k));
                    inter[k as usize] += a.logical_and(&b).sum(Kind::Float).double_value(&[]);
                    union[k as usize] += a.logical_or(&b).sum(Kind::Float).double_value(&[]);
                }
            }
            start += len;
        }
        let accs: Vec<f64> = correct
            .iter()
            .zip(&counted)
            .filter(|(_, &c)| c > 0.0)
            .map(|(a, c)| a / c)
            .collect();
        let ious: Vec<f64> = inter
            .iter()
            .zip(&union)
            .filter(|(_, &u)| u > 0.0)
            .map(|(i, u)| i / u)
            .collect();
        Scores {
            per_group: correct
                .iter()
                .zip(&counted)
                .map(|(a, &c)| if c > 0.0 { a / c } else { f64::NAN })
                .collect(),
            attr_accuracy: accs.iter().sum::<f64>() / accs.len().max(1) as f64,
            seg_miou: if ious.is_empty() {
                f64::NAN
            } else {
                ious.iter().sum::<f64>() / ious.len() as f64
            },
        }
    })
}

struct Side {
    name: &'static str,
    vs: VarStore,
    net: JudgeNet,
    opt: Adam,
    /// Its training partition.
    data: Labelled,
}

/// Mirrors (left-right) the samples of `x: [B, C, H, W]` where `flip` is true.
fn mirror(x: &Tensor, flip: &[bool]) -> Tensor {
    let mask = Tensor::from_slice(flip)
        .to_device(x.device())
        .view([-1, 1, 1, 1]);
    x.flip([3]).where_self(&mask, x)
}

/// Runs `train-judge`.
pub fn run(
    cfg: &JudgeConfig,
    resume: Option<&Path>,
    device: Device,
    reporter: &mut dyn Reporter,
    cancel: &CancelToken,
) -> anyhow::Result<Outcome> {
    let ds: Dataset = cfg.dataset.open()?;
    let resolution = match (&cfg.dataset, cfg.resolution) {
        (_, Some(r)) => r,
        (DatasetSpec::SyntheticBirds { resolution, .. }, None) => *resolution,
        (DatasetSpec::Cub { .. }, None) => 64,
    };
    let group_sizes: Vec<i64> = ds.groups.iter().map(|g| g.values.len() as i64).collect();
    let parts = ds.mask_classes() as i64;
    let load = |p: Partition| Labelled::load(&ds, p, resolution, device);
    let test = load(Partition::Test)?;
    tch::manual_seed(cfg.seed as i64);
    let mut sides = Vec::new();
    for (name, part) in [
        ("critic", Partition::Train),
        ("judge", Partition::JudgeTrain),
    ] {
        let (vs, net) = build(device, &cfg.net, &group_sizes, parts);
        let opt = Adam::new(trainable_vars(&vs), cfg.lr, 0.9, 0.999, 1e-8);
        sides.push(Side {
            name,
            vs,
            net,
            opt,
            data: load(part)?,
        });
    }
    let mut start = 0;
    if let Some(path) = resume {
        let ckpt = Checkpoint::load(path)?;
        ckpt.expect_kind("train-judge")?;
        ckpt.expect_resume_state()?;
        for s in &mut sides {
            ckpt.restore(&format!("{}.", s.name), &named_vars(&s.vs))?;
            s.opt.restore(&ckpt, &format!("{}.opt.", s.name))?;
        }
        start = ckpt.step;
    }
    reporter.log(&format!("train-judge on {device:?}: {} images, {} attribute groups, {} part labels, steps {start}..{}", ds.images.len(), group_sizes.len(), parts, cfg.steps));
    let mut job = JudgeTraining {
        cfg,
        device,
        group_names: ds.groups.iter().map(|g| g.name.clone()).collect(),
        group_sizes,
        parts,
        resolution,
        test,
        sides,
    };
    let cadence = Cadence::per_step(
        "train-judge",
        cfg.steps,
        cfg.seed,
        vec![
            (Task::Evaluate, cfg.eval_every),
            (Task::Checkpoint, cfg.checkpoint_every),
        ],
    );
    step_loop(&mut job, start, &cadence, reporter, cancel)
}

/// A partition's images with their attribute labels and (when the dataset has them) part
/// masks, on the device.
struct Labelled {
    images: Tensor,
    labels: Tensor,
    masks: Option<Tensor>,
}

impl Labelled {
    fn load(ds: &Dataset, p: Partition, resolution: u32, device: Device) -> anyhow::Result<Self> {
        let idx = ds.partition(p);
        anyhow::ensure!(
            !idx.is_empty(),
            "the {p:?} partition of the dataset is empty"
        );
        Ok(Labelled {
            images: ds.load_images(&idx, resolution)?.to_device(device),
            labels: ds.label_tensor(&idx).to_device(device),
            masks: ds
                .load_masks(&idx, resolution)?
                .map(|m| m.to_device(device)),
        })
    }
}

/// `train-judge` as the step loop drives it.
struct JudgeTraining<'a> {
    cfg: &'a JudgeConfig,
    device: Device,
    group_names: Vec<String>,
    group_sizes: Vec<i64>,
    parts: i64,
    resolution: u32,
    test: Labelled,
    sides: Vec<Side>,
}

impl JudgeTraining<'_> {
    /// Both networks, their optimizers' state and what a reader needs to rebuild them.
    fn save(&self, step: i64, reporter: &mut dyn Reporter) -> anyhow::Result<()> {
        let (mut weights, mut state) = (Vec::new(), Vec::new());
        for s in &self.sides {
            weights.extend(checkpoint::prefixed(
                &format!("{}.", s.name),
                &named_vars(&s.vs),
            ));
            state.extend(checkpoint::prefixed(
                &format!("{}.opt.", s.name),
                &s.opt.state(),
            ));
        }
        let mut meta = BTreeMap::new();
        meta.insert("judge.net".into(), serde_json::to_string(&self.cfg.net)?);
        meta.insert(
            "judge.group_sizes".into(),
            serde_json::to_string(&self.group_sizes)?,
        );
        meta.insert(
            "judge.group_names".into(),
            serde_json::to_string(&self.group_names)?,
        );
        meta.insert("judge.parts".into(), self.parts.to_string());
        meta.insert("judge.resolution".into(), self.resolution.to_string());
        meta.insert("job.config".into(), serde_json::to_string(self.cfg)?);
        let parts = checkpoint::Parts { weights, state };
        checkpoint::write(reporter, "train-judge", step, &meta, &parts)
    }

    /// Test-split accuracy (and part mIoU) of both networks; per group at the last step.
    fn evaluate(&self, step: i64, reporter: &mut dyn Reporter) -> anyhow::Result<()> {
        let t = &self.test;
        let scores: Vec<Scores> = self
            .sides
            .iter()
            .map(|s| score(&s.net, &t.images, &t.labels, t.masks.as_ref()))
            .collect();
        let mut pairs: Vec<(String, f64)> = Vec::new();
        for (s, sc) in self.sides.iter().zip(&scores) {
            pairs.push((format!("{}/attr_accuracy", s.name), sc.attr_accuracy));
            if !sc.seg_miou.is_nan() {
                pairs.push((format!("{}/seg_miou", s.name), sc.seg_miou));
            }
        }
        let borrowed: Vec<(&str, f64)> = pairs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        reporter.metrics(step, &borrowed)?;
        if step == self.cfg.steps {
            for (s, sc) in self.sides.iter().zip(&scores) {
                let groups: Vec<String> = self
                    .group_names
                    .iter()
                    .zip(&sc.per_group)
                    .map(|(g, a)| format!("{g}={a:.3}"))
                    .collect();
                reporter.log(&format!(
                    "{} test accuracy per group: {}",
                    s.name,
                    groups.join(" ")
                ));
            }
        }
        let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
        reporter.log(&format!("step {step}: {}", shown.join(" ")));
        Ok(())
    }
}

impl TrainingJob for JudgeTraining<'_> {
    fn train_step(&mut self, step: i64, seed: u64) -> anyhow::Result<Vec<(String, f64)>> {
        let (cfg, device) = (self.cfg, self.device);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut losses = Vec::new();
        // Cosine decay to zero: a function of the step alone, so resuming is exact.
        let lr =
            cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / cfg.steps as f64).cos());
        for s in &mut self.sides {
            s.opt.lr = lr;
            let n = s.data.images.size()[0];
            let idx: Vec<i64> = (0..cfg.batch).map(|_| rng.random_range(0..n)).collect();
            let idx = Tensor::from_slice(&idx).to_device(device);
            // Mirror half the batch: birds face either way, so labels and (mirrored) masks hold.
            let flip: Vec<bool> = (0..cfg.batch).map(|_| rng.random_bool(0.5)).collect();
            let x = mirror(&s.data.images.index_select(0, &idx), &flip);
            let out = s.net.forward(&x);
            let mut loss = s
                .net
                .attribute_loss(&out.attr_logits, &s.data.labels.index_select(0, &idx));
            if let (Some(m), Some(logits)) = (&s.data.masks, &out.part_logits) {
                let target = mirror(&m.index_select(0, &idx).unsqueeze(1), &flip).squeeze_dim(1);
                loss += logits.cross_entropy_loss::<Tensor>(
                    &target,
                    None,
                    tch::Reduction::Mean,
                    -100,
                    0.0,
                );
            }
            s.opt.zero_grad();
            loss.backward();
            s.opt.step();
            losses.push(loss.double_value(&[]));
        }
        Ok(vec![
            ("critic/loss".into(), losses[0]),
            ("judge/loss".into(), losses[1]),
        ])
    }

    fn run_task(
        &mut self,
        task: Task,
        step: i64,
        reporter: &mut dyn Reporter,
    ) -> anyhow::Result<()> {
        match task {
            Task::Evaluate => self.evaluate(step, reporter),
            Task::Checkpoint => self.save(step, reporter),
            Task::Samples => Ok(()),
        }
    }
}
