//! The text methods' loss recipes: shapes, finite losses, where gradients go, and ablation.

use plume_worker::judge::model::{JudgeNet, JudgeNetConfig};
use plume_worker::judge::train::Trained;
use plume_worker::stylegan::generator::Generator;
use plume_worker::stylegan::NetworkConfig;
use plume_worker::text::bert::{default_model_dir, TextEncoder};
use plume_worker::text::methods::{
    grounding_map, loss_terms, predict, predict_grounded, total_loss, Example, LossWeights, Method,
    Nets, Recipe, ReconstructionTarget, StyleHeads, GRID,
};

fn recipe(method: Method, weights: LossWeights, target: ReconstructionTarget) -> Recipe {
    Recipe {
        method,
        weights,
        target,
        temperature: 0.1,
    }
}
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

struct Fixture {
    g_vs: VarStore,
    g: Generator,
    critic: Trained,
    images: Tensor,
    w: Tensor,
    labels: Tensor,
}

fn fixture() -> Fixture {
    tch::manual_seed(4);
    let mut g_vs = VarStore::new(Device::Cpu);
    let net = NetworkConfig {
        resolution: 32,
        z_dim: 32,
        w_dim: 32,
        mapping_layers: 2,
        channel_base: 256,
        channel_max: 16,
    };
    let g = Generator::new(&g_vs.root(), &net);
    g_vs.freeze();
    let mut c_vs = VarStore::new(Device::Cpu);
    let groups = [15i64, 15, 15, 15, 3, 3, 4];
    let cnet = JudgeNet::new(
        &c_vs.root(),
        &JudgeNetConfig {
            channels: [8, 8, 8],
            hidden: 16,
        },
        &groups,
        10,
    );
    c_vs.freeze();
    let labels = Tensor::from_slice(&[
        3i64, 1, 4, 1, 0, 2, 1, 5, 9, 2, 6, 1, 1, 3, 14, 0, 7, 7, 2, 0, 0, 8, 2, 13, 0, 1, 2, 3,
    ])
    .view([4, 7]);
    Fixture {
        g_vs,
        g,
        critic: Trained {
            vs: c_vs,
            net: cnet,
            resolution: 32,
        },
        images: Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0,
        w: Tensor::randn([4, 32], (Kind::Float, Device::Cpu)),
        labels,
    }
}

const CAPTIONS: [&str; 4] = [
    "this bird has a red breast, black wings and a short bill",
    "a small yellow bird with blue wings",
    "a bird with green wings, a white crown and a grey back",
    "this large bird has a long bill and orange wings",
];

fn encoder() -> TextEncoder {
    TextEncoder::load(
        &default_model_dir().expect("run scripts/setup"),
        Device::Cpu,
        32,
    )
    .unwrap()
}

#[test]
fn each_method_gives_finite_losses_and_trains_bert_and_heads_but_never_the_generator() {
    let f = fixture();
    let expected: [(Method, &[&str]); 4] = [
        (Method::Weighted, &["image", "style", "sparsity"]),
        (Method::Reconstruction, &["image", "style"]),
        (
            Method::Contrastive,
            &["contrastive", "preservation", "reconstruction"],
        ),
        (
            Method::VisualGrounding,
            &["contrastive", "preservation", "reconstruction"],
        ),
    ];
    for (method, names) in expected {
        let enc = encoder();
        let heads = StyleHeads::for_method(method, Device::Cpu, 384, 32, Some(&f.critic)).unwrap();
        let (p, v) = predict(&enc, &heads, &f.g, &CAPTIONS).unwrap();
        assert_eq!((p.size(), v.size()), (vec![4, 32], vec![4, 32]));
        let ex = Example {
            images: &f.images,
            w: &f.w,
            captions: CAPTIONS.to_vec(),
            labels: &f.labels,
        };
        let nets = Nets {
            enc: &enc,
            heads: &heads,
            g: &f.g,
            critic: Some(&f.critic),
        };
        let terms = loss_terms(
            &recipe(method, LossWeights::default(), ReconstructionTarget::Both),
            &nets,
            &ex,
        )
        .unwrap();
        assert_eq!(
            terms.iter().map(|t| t.0).collect::<Vec<_>>(),
            names.to_vec(),
            "{method:?}"
        );
        for (name, _, t) in &terms {
            assert!(
                t.double_value(&[]).is_finite(),
                "{method:?} {name} is not finite"
            );
        }
        total_loss(&terms).unwrap().backward();
        for (name, t) in f.g_vs.variables() {
            assert!(
                !t.grad().defined(),
                "{method:?}: generator weight {name} got a gradient"
            );
        }
        for (name, t) in f.critic.vs.variables() {
            assert!(
                !t.grad().defined(),
                "{method:?}: critic weight {name} got a gradient"
            );
        }
        let grad_norm = |vs: &VarStore, key: &str| {
            let vars = vs.variables();
            let t = &vars[key];
            let g = t.grad();
            if g.defined() {
                g.abs().sum(Kind::Float).double_value(&[])
            } else {
                0.0
            }
        };
        assert!(
            grad_norm(&enc.vs, "encoder.layer.5.output.dense.weight") > 0.0,
            "{method:?}: BERT gets no gradient"
        );
        assert!(
            grad_norm(&heads.vs, "p2.weight") > 0.0,
            "{method:?}: the style head gets no gradient"
        );
        if method == Method::VisualGrounding {
            for key in ["visual.proj.weight", "visual.position", "visual.segment"] {
                assert!(
                    grad_norm(&heads.vs, key) > 0.0,
                    "M4: the visual tokens' {key} gets no gradient"
                );
            }
        }
    }
}

#[test]
fn m4_reads_the_image_and_grounds_the_changed_words() {
    let f = fixture();
    let enc = encoder();
    let heads = StyleHeads::for_method(
        Method::VisualGrounding,
        Device::Cpu,
        384,
        32,
        Some(&f.critic),
    )
    .unwrap();
    let nets = Nets {
        enc: &enc,
        heads: &heads,
        g: &f.g,
        critic: Some(&f.critic),
    };
    let caps = [CAPTIONS[0], CAPTIONS[0]];
    let two = f.images.narrow(0, 0, 2);
    let pred = predict_grounded(&nets, &caps, &two).unwrap();
    let t = pred.tokens[0].len() as i64;
    assert_eq!(pred.word_to_image.size(), vec![2, t, GRID * GRID]);
    // Same caption, different birds: the prediction depends on the image.
    let diff = (pred.p.get(0) - pred.p.get(1))
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff > 1e-6, "M4 ignores the image (difference {diff})");
    // Attention rows are parts of a softmax: non-negative, and over the image at most 1.
    let row_sums = pred
        .word_to_image
        .sum_dim_intlist([2i64].as_slice(), false, None);
    assert!(pred.word_to_image.min().double_value(&[]) >= 0.0);
    assert!(row_sums.max().double_value(&[]) <= 1.0 + 1e-5);
    // The map of an edit has its peak at 1 and the image's size.
    let sources = ["this bird has a blue breast, black wings and a short bill"; 2];
    let map = grounding_map(&pred, Some(&sources), 32).unwrap();
    assert_eq!(map.size(), vec![2, 1, 32, 32]);
    assert!((map.max().double_value(&[]) - 1.0).abs() < 1e-4);
    // Only the changed word ("red") selects attention rows: a map from that row alone agrees.
    let red = pred.tokens[0].iter().position(|w| w == "red").unwrap() as i64;
    let only_red = pred.word_to_image.get(0).get(red);
    let only_red = &only_red / only_red.max();
    let small = map
        .get(0)
        .get(0)
        .unsqueeze(0)
        .unsqueeze(0)
        .adaptive_avg_pool2d([GRID, GRID])
        .flatten(0, -1);
    let corr = (&small - small.mean(Kind::Float))
        .dot(&(&only_red - only_red.mean(Kind::Float)))
        .double_value(&[]);
    assert!(corr > 0.0, "the map does not follow the changed word");
}

#[test]
fn a_zero_weight_removes_its_term_and_m4_needs_a_critic() {
    let f = fixture();
    let enc = encoder();
    let heads = StyleHeads::new(Device::Cpu, 384, 32, None);
    let ex = Example {
        images: &f.images,
        w: &f.w,
        captions: CAPTIONS.to_vec(),
        labels: &f.labels,
    };
    let nets = Nets {
        enc: &enc,
        heads: &heads,
        g: &f.g,
        critic: None,
    };
    let no_style = LossWeights {
        style: 0.0,
        ..LossWeights::default()
    };
    let terms = loss_terms(
        &recipe(
            Method::Weighted,
            no_style.clone(),
            ReconstructionTarget::Input,
        ),
        &nets,
        &ex,
    )
    .unwrap();
    assert_eq!(
        terms.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec!["image", "sparsity"]
    );
    // Without preservation and feature terms, M3 needs no critic at all.
    let no_critic = LossWeights {
        preservation: 0.0,
        feature: 0.0,
        ..LossWeights::default()
    };
    let terms = loss_terms(
        &recipe(
            Method::Contrastive,
            no_critic.clone(),
            ReconstructionTarget::Input,
        ),
        &nets,
        &ex,
    )
    .unwrap();
    assert_eq!(
        terms.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec!["contrastive", "reconstruction"]
    );
    let err = loss_terms(
        &recipe(
            Method::Contrastive,
            LossWeights::default(),
            ReconstructionTarget::Input,
        ),
        &nets,
        &ex,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("critic"), "{err}");
    // Reconstruction against both images is larger than against the input alone (extra term).
    let only_rec = LossWeights {
        contrastive: 0.0,
        preservation: 0.0,
        feature: 0.0,
        ..LossWeights::default()
    };
    let r_in = loss_terms(
        &recipe(
            Method::Contrastive,
            only_rec.clone(),
            ReconstructionTarget::Input,
        ),
        &nets,
        &ex,
    )
    .unwrap();
    let r_both = loss_terms(
        &recipe(
            Method::Contrastive,
            only_rec.clone(),
            ReconstructionTarget::Both,
        ),
        &nets,
        &ex,
    )
    .unwrap();
    assert!(r_both[0].2.double_value(&[]) > r_in[0].2.double_value(&[]));
    let err = loss_terms(
        &recipe(
            Method::VisualGrounding,
            LossWeights::default(),
            ReconstructionTarget::Input,
        ),
        &nets,
        &ex,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("visual-grounding"), "{err}");
}
