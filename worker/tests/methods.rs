//! The text methods' loss recipes: shapes, finite losses, where gradients go, and ablation.

use plume_worker::judge::model::{JudgeNet, JudgeNetConfig};
use plume_worker::judge::train::Trained;
use plume_worker::stylegan::generator::Generator;
use plume_worker::stylegan::NetworkConfig;
use plume_worker::text::bert::{default_model_dir, TextEncoder};
use plume_worker::text::losses::{
    edit_style_targets, edit_targets, grounding_loss, loss_terms, mentions, total_loss,
    unedited_region, Example, Recipe,
};
use plume_worker::text::methods::{
    class_means, colour_word_groups, grounding_map, predict, predict_grounded, EditForm, EditSpec,
    LossWeights, Method, Nets, ReconstructionTarget, StyleHeads, GRID,
};

/// Every term on, the pixel terms too, so that gradients through the generator are checked.
fn all_terms() -> LossWeights {
    LossWeights {
        image: 1.0,
        preservation: 1.0,
        reconstruction: 1.0,
        unedited_region: 1.0,
        ..LossWeights::default()
    }
}

fn recipe(method: Method, weights: LossWeights, target: ReconstructionTarget) -> Recipe {
    Recipe {
        target,
        ..Recipe::new(method, weights)
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
    masks: Tensor,
    class_means: Tensor,
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
        input: plume_jobs::MappingInput::Latent,
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
    let w = Tensor::randn([4, 32], (Kind::Float, Device::Cpu));
    Fixture {
        class_means: class_means(&w, &labels),
        g_vs,
        g,
        critic: Trained {
            vs: c_vs,
            net: cnet,
            resolution: 32,
        },
        images: Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0,
        w,
        labels,
        masks: Tensor::randint(10, [4, 32, 32], (Kind::Int64, Device::Cpu)),
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
    // The edit terms: the M0 style first, then the residual's delta, M4's grounding, and
    // the terms on the rendered edit.
    let pixels: &[&str] = &["preservation", "unedited_region"];
    let expected: [(Method, EditForm, Vec<&str>); 7] = [
        (
            Method::Weighted,
            EditForm::Blend,
            [
                &["image", "style", "sparsity", "identity", "edit_style"][..],
                pixels,
            ]
            .concat(),
        ),
        (
            Method::Weighted,
            EditForm::Residual,
            [
                &["image", "style", "identity", "edit_style", "delta"][..],
                pixels,
            ]
            .concat(),
        ),
        (
            Method::Reconstruction,
            EditForm::Blend,
            vec!["image", "style", "edit_style"],
        ),
        (
            Method::Contrastive,
            EditForm::Blend,
            [
                &["contrastive", "identity", "edit_style"][..],
                pixels,
                &["reconstruction"],
            ]
            .concat(),
        ),
        (
            Method::Contrastive,
            EditForm::Residual,
            [
                &["contrastive", "identity", "edit_style", "delta"][..],
                pixels,
                &["reconstruction"],
            ]
            .concat(),
        ),
        (
            Method::VisualGrounding,
            EditForm::Blend,
            [
                &["contrastive", "identity", "edit_style", "grounding"][..],
                pixels,
                &["reconstruction"],
            ]
            .concat(),
        ),
        (
            Method::VisualGrounding,
            EditForm::Residual,
            [
                &[
                    "contrastive",
                    "identity",
                    "edit_style",
                    "delta",
                    "grounding",
                ][..],
                pixels,
                &["reconstruction"],
            ]
            .concat(),
        ),
    ];
    for (method, form, names) in expected {
        let enc = encoder();
        let spec = EditSpec {
            form,
            ..EditSpec::default()
        };
        let heads =
            StyleHeads::for_method(method, Device::Cpu, 384, 32, Some(&f.critic), spec).unwrap();
        let pred = predict(&enc, &heads, &f.g, &CAPTIONS).unwrap();
        assert_eq!((pred.p.size(), pred.v.size()), (vec![4, 32], vec![4, 32]));
        let ex = Example {
            images: &f.images,
            w: &f.w,
            captions: CAPTIONS.to_vec(),
            labels: &f.labels,
            masks: Some(&f.masks),
            class_means: Some(&f.class_means),
        };
        let nets = Nets {
            enc: &enc,
            heads: &heads,
            g: &f.g,
            critic: Some(&f.critic),
        };
        let terms = loss_terms(
            &recipe(method, all_terms(), ReconstructionTarget::Both),
            &nets,
            &ex,
        )
        .unwrap();
        assert_eq!(
            terms.iter().map(|t| t.0).collect::<Vec<_>>(),
            names,
            "{method:?} {form:?}"
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
            "{method:?} {form:?}: BERT gets no gradient"
        );
        // The head that makes the edit learns: the style head (blend, and M2, M3's
        // contrast), the delta head (residual).
        let head = match (method, form) {
            (Method::Weighted, EditForm::Residual) => "d2.weight",
            _ => "p2.weight",
        };
        assert!(
            grad_norm(&heads.vs, head) > 0.0,
            "{method:?} {form:?}: {head} gets no gradient"
        );
        if form == EditForm::Residual && method != Method::Reconstruction {
            assert!(
                grad_norm(&heads.vs, "d2.weight") > 0.0,
                "{method:?}: delta head"
            );
        }
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

/// Preservation asks for what the partner caption names and the source's values elsewhere;
/// the unedited region is everything outside the parts of the groups that change.
#[test]
fn preservation_asks_only_for_the_mentioned_groups() {
    let captions = [
        "a bird with red wings",            // 1 group
        "this small bird has a blue crown", // 2 groups
        "this bird has a grey body, black wings, a white breast and a buff crown", // 4 groups
    ];
    let (named, values) = mentions(&captions, Device::Cpu);
    let named = Vec::<bool>::try_from(named.to_kind(Kind::Bool).flatten(0, -1)).unwrap();
    let at = |i: usize, g: usize| named[i * 7 + g];
    assert_eq!((0..7).filter(|&g| at(0, g)).collect::<Vec<_>>(), vec![1]);
    assert_eq!((0..7).filter(|&g| at(1, g)).collect::<Vec<_>>(), vec![2, 5]);
    assert_eq!(
        (0..7).filter(|&g| at(2, g)).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let source = Tensor::from_slice(&[
        1i64, 2, 3, 4, 0, 1, 2, //
        5, 6, 7, 8, 1, 2, 3, //
        9, 10, 11, 12, 2, 0, 1,
    ])
    .view([3, 7]);
    let (named_t, values_t) = mentions(&captions, Device::Cpu);
    assert_eq!(values.size(), vec![3, 7]);
    let wanted = edit_targets(&named_t, &values_t, &source);
    assert_eq!(
        Vec::<i64>::try_from(wanted.flatten(0, -1)).unwrap(),
        vec![
            1, 14, 3, 4, 0, 1, 2, // red wings; the rest the source's
            5, 6, 0, 8, 1, 0, 3, // blue crown, small
            12, 11, 13, 5, 2, 0, 1, // white breast, black wings, buff crown, grey body
        ]
    );
    // Changing only the wings keeps every pixel but the wing's (part 3).
    let masks = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7, 8, 9]).view([1, 1, 10]);
    let wings = Tensor::from_slice(&[false, true, false, false, false, false, false]).view([1, 7]);
    assert_eq!(
        Vec::<f32>::try_from(unedited_region(&wings, &masks).flatten(0, -1)).unwrap(),
        vec![1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    );
    // Changing the crown and the background keeps only the other bird parts.
    let two = Tensor::from_slice(&[false, false, true, false, false, false, true]).view([1, 7]);
    assert_eq!(
        Vec::<f32>::try_from(unedited_region(&two, &masks).flatten(0, -1)).unwrap(),
        vec![0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    );
}

/// Untrained heads of the fixed recipe barely edit: the blend starts at v = sigmoid(-3), the
/// residual at a delta near 0. The seed's v (bias 0) moves half-way to p at once.
#[test]
fn untrained_fixed_heads_keep_the_source() {
    let f = fixture();
    let enc = encoder();
    for (spec, most) in [
        (EditSpec::default(), 0.06),
        (
            EditSpec {
                form: EditForm::Residual,
                ..EditSpec::default()
            },
            0.05,
        ),
    ] {
        let heads =
            StyleHeads::for_method(Method::Weighted, Device::Cpu, 384, 32, None, spec).unwrap();
        let pred = predict(&enc, &heads, &f.g, &CAPTIONS).unwrap();
        let (w_hat, _) = heads.edit(&pred, &f.w, &f.g);
        let moved = (&w_hat - &f.w).abs().max().double_value(&[])
            / (&pred.p - &f.w).abs().max().double_value(&[]);
        assert!(moved <= most, "{spec:?}: moved {moved} of the way");
    }
    let seed = StyleHeads::for_method(
        Method::Weighted,
        Device::Cpu,
        384,
        32,
        None,
        EditSpec {
            form: EditForm::Blend,
            v_bias: 0.0,
        },
    )
    .unwrap();
    let pred = predict(&enc, &seed, &f.g, &CAPTIONS).unwrap();
    assert!((pred.v.mean(Kind::Float).double_value(&[]) - 0.5).abs() < 1e-6);
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
        EditSpec::default(),
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
    let diff = (pred.pred.p.get(0) - pred.pred.p.get(1))
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
    let heads = StyleHeads::new(Device::Cpu, 384, 32, None, EditSpec::default());
    let ex = Example {
        images: &f.images,
        w: &f.w,
        captions: CAPTIONS.to_vec(),
        labels: &f.labels,
        masks: Some(&f.masks),
        class_means: Some(&f.class_means),
    };
    let nets = Nets {
        enc: &enc,
        heads: &heads,
        g: &f.g,
        critic: None,
    };
    let no_style = LossWeights {
        style: 0.0,
        preservation: 0.0,
        ..all_terms()
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
        vec![
            "image",
            "sparsity",
            "identity",
            "edit_style",
            "unedited_region"
        ]
    );
    // Without preservation and feature terms, M3 needs no critic at all.
    let no_critic = LossWeights {
        preservation: 0.0,
        feature: 0.0,
        ..all_terms()
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
        vec![
            "contrastive",
            "identity",
            "edit_style",
            "unedited_region",
            "reconstruction"
        ]
    );
    let err = loss_terms(
        &recipe(
            Method::Contrastive,
            all_terms(),
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
        identity: 0.0,
        unedited_region: 0.0,
        edit_style: 0.0,
        ..all_terms()
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

/// The M0 target steps from the source's value to the named one in each group the caption
/// changes, and leaves a style alone when the caption names what the source already is.
#[test]
fn edit_style_targets_step_along_the_class_means_of_the_changed_values() {
    use plume_worker::dataset::vocab::Group;
    use plume_worker::text::methods::value_row;
    let values: i64 = Group::ALL.iter().map(|g| g.values().len() as i64).sum();
    let means = Tensor::randn([values, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([3, 8], (Kind::Float, Device::Cpu));
    // Sources: wing 1 (brown), breast 3 (purple); the third has no wing label.
    let labels = Tensor::from_slice(&[
        3i64, 1, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 3, -1, 0, 0, 0, 0, 0,
    ])
    .view([3, 7]);
    let captions = [
        "a bird with red wings",                       // wing brown -> red
        "a bird with brown wings and a purple breast", // what the source is: no step
        "a bird with red wings",                       // unlabelled wing: from the group's mean
    ];
    let target = edit_style_targets(&w, &labels, &captions, &means).unwrap();
    let (red, brown) = (
        value_row(Group::WingColour, 14),
        value_row(Group::WingColour, 1),
    );
    let want0 = w.get(0) + means.get(red) - means.get(brown);
    assert!(target.get(0).allclose(&want0, 1e-5, 1e-6, false));
    assert!(target.get(1).allclose(&w.get(1), 1e-6, 1e-6, false));
    let wing_mean = means
        .narrow(0, value_row(Group::WingColour, 0), 15)
        .mean_dim(0, false, None);
    let want2 = w.get(2) + means.get(red) - wing_mean;
    assert!(target.get(2).allclose(&want2, 1e-5, 1e-6, false));
}

/// The colour word and the part word of each "colour part" phrase name that part's group,
/// also when the tokenizer splits a word into pieces.
#[test]
fn colour_words_and_their_part_words_are_found_in_the_tokens() {
    use plume_worker::dataset::vocab::Group;
    let enc = encoder();
    let caption = "a small bird with iridescent wings, a red crown and a grey back";
    let batch = enc.tokenize(&[caption]).unwrap();
    let tokens = &batch.tokens[0];
    let groups = colour_word_groups(tokens);
    let named: Vec<(String, Group)> = tokens
        .iter()
        .zip(&groups)
        .filter_map(|(t, g)| g.map(|g| (t.clone(), g)))
        .collect();
    let words_of = |group: Group| -> String {
        named
            .iter()
            .filter(|(_, g)| *g == group)
            .map(|(t, _)| t.trim_start_matches("##"))
            .collect()
    };
    assert_eq!(words_of(Group::WingColour), "iridescentwings", "{tokens:?}");
    assert_eq!(words_of(Group::CrownColour), "redcrown");
    assert_eq!(words_of(Group::UpperpartsColour), "greyback");
    assert!(tokens
        .iter()
        .zip(&groups)
        .any(|(t, g)| t == "small" && g.is_none()));
}

/// M4's grounding term is lower when a colour word attends to the cells its part covers
/// than when it attends everywhere or elsewhere.
#[test]
fn grounding_loss_rewards_attention_on_the_named_part() {
    let enc = encoder();
    let batch = enc.tokenize(&["a bird with a red breast"]).unwrap();
    let tokens = batch.tokens.clone();
    let t = tokens[0].len() as i64;
    let k = GRID * GRID;
    // The breast (part 2) fills the top-left 4 x 4 pixels: grid cell 0 at 32 px.
    let masks = Tensor::zeros([1, 32, 32], (Kind::Int64, Device::Cpu));
    let _ = masks.narrow(1, 0, 4).narrow(2, 0, 4).fill_(2);
    let attend = |cell: Option<i64>| {
        let a = match cell {
            Some(c) => Tensor::zeros([1, t, k], (Kind::Float, Device::Cpu)).index_fill(
                2,
                &Tensor::from_slice(&[c]),
                1.0,
            ),
            None => Tensor::ones([1, t, k], (Kind::Float, Device::Cpu)) / k as f64,
        };
        grounding_loss(&a, &tokens, &masks)
            .unwrap()
            .expect("the caption names a colour part")
            .double_value(&[])
    };
    let (on, uniform, off) = (attend(Some(0)), attend(None), attend(Some(k - 1)));
    assert!(on < 1e-3, "attention on the part: {on}");
    assert!(on < uniform && uniform < off, "{on} {uniform} {off}");
    // No colour phrase: no term.
    let plain = enc.tokenize(&["a small bird"]).unwrap();
    let a = Tensor::ones(
        [1, plain.tokens[0].len() as i64, k],
        (Kind::Float, Device::Cpu),
    );
    assert!(grounding_loss(&a, &plain.tokens, &masks).unwrap().is_none());
}
