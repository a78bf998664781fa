//! BERT in tch against sentence-transformers, and its handling of hostile text and files.

use plume_worker::text::bert::{default_model_dir, TextEncoder};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tch::{Device, Kind};

fn model_dir() -> PathBuf {
    default_model_dir().expect("all-MiniLM-L6-v2: run scripts/setup (or set PLUME_BERT_DIR)")
}

fn captions() -> Vec<String> {
    let mut c: Vec<String> = vec![
        "this bird has a red breast, black wings and a short bill".into(),
        "a small yellow bird with blue wings".into(),
        "an iridescent bird with a buff crown near the water".into(),
        "THE BIRD HAS A LONG BILL AND RUFOUS WINGS!".into(),
        "".into(),
        "bird".into(),
        "zxqvbn glorptastic featherwhirl".into(),
        "a bird,with;odd:punctuation--and   spaces".into(),
        "un oiseau rouge avec des ailes noires".into(),
        "über-grüne Vögel 🐦 with emoji".into(),
        "this medium-sized bird has a grey body, olive wings, a pink breast and a white crown"
            .into(),
        "a large bird with a medium bill and an orange breast in front of the sky".into(),
    ];
    for i in 0..12 {
        c.push(format!(
            "caption number {i}: a bird with {} wings",
            ["red", "green", "blue", "white"][i % 4]
        ));
    }
    c.push("word ".repeat(400)); // longer than the 256-token limit: both sides truncate
    c
}

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("PLUME_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    venv.join("bin/python")
}

#[test]
fn pooled_embeddings_match_sentence_transformers() {
    let dir = model_dir();
    let caps = captions();
    assert!(caps.len() >= 20);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bert_reference.py");
    let mut child = Command::new(venv_python())
        .arg(&script)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("venv python");
    serde_json::to_writer(child.stdin.take().unwrap(), &caps).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "reference script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).unwrap();

    let enc = TextEncoder::load(&dir, Device::Cpu, 256).unwrap();
    let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
    let ours = tch::no_grad(|| enc.embed_sentences(&refs).unwrap());
    assert_eq!(ours.size(), vec![caps.len() as i64, 384]);
    let mut worst = 0f32;
    for (i, r) in reference.iter().enumerate() {
        let row = Vec::<f32>::try_from(&ours.get(i as i64)).unwrap();
        for (a, b) in row.iter().zip(r) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("max |ours - sentence-transformers| = {worst:e}");
    assert!(worst < 1e-5, "max abs difference {worst}");
}

#[test]
fn hostile_text_is_truncated_or_tokenised_never_a_panic() {
    let enc = TextEncoder::load(&model_dir(), Device::Cpu, 64).unwrap();
    let huge = "feather ".repeat(10_000);
    let non_utf8 =
        String::from_utf8_lossy(&[0x66, 0xff, 0xfe, 0x62, 0x69, 0x72, 0x64]).into_owned();
    let inputs = [
        "",
        "   ",
        huge.as_str(),
        non_utf8.as_str(),
        "qwzx vlorbic",
        "\u{0}\u{7}control",
    ];
    let batch = enc.tokenize(&inputs).unwrap();
    assert_eq!(
        batch.ids.size()[1],
        64,
        "the 10k-word caption is truncated to max_tokens"
    );
    assert_eq!(
        batch.tokens[0],
        vec!["[CLS]", "[SEP]"],
        "an empty caption is [CLS] [SEP]"
    );
    let emb = tch::no_grad(|| enc.embed_sentences(&inputs).unwrap());
    assert!(bool::try_from(emb.isfinite().all()).unwrap());
    let norms = emb.norm_scalaropt_dim(2, [1i64].as_slice(), false);
    assert!(((norms - 1.0).abs().max().double_value(&[])) < 1e-4);
}

#[test]
fn freezing_lower_layers_stops_their_gradients() {
    let enc = TextEncoder::load(&model_dir(), Device::Cpu, 32).unwrap();
    enc.freeze_lower_layers(4);
    let emb = enc
        .embed_sentences(&["a red bird", "a blue bird with black wings"])
        .unwrap();
    emb.select(1, 0).sum(Kind::Float).backward();
    let mut trained = 0;
    for (name, t) in enc.vs.variables() {
        let frozen = name.starts_with("embeddings.")
            || ["0", "1", "2", "3"]
                .iter()
                .any(|i| name.starts_with(&format!("encoder.layer.{i}.")));
        let g = t.grad();
        if frozen {
            assert!(
                !t.requires_grad() && !g.defined(),
                "{name} should be frozen"
            );
        } else if name.starts_with("encoder.layer.5.") {
            assert!(
                g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name} gets no gradient"
            );
            trained += 1;
        }
    }
    assert!(trained > 0);
}

#[test]
fn mismatched_or_missing_weights_name_the_key_and_shape() {
    let src = model_dir();
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        config.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024"),
    )
    .unwrap();
    let err = TextEncoder::load(tmp.path(), Device::Cpu, 32)
        .err()
        .expect("shape mismatch")
        .to_string();
    assert!(
        err.contains("`encoder.layer.0.intermediate.dense.")
            && err.contains("[1024")
            && err.contains("[1536"),
        "{err}"
    );

    std::fs::write(
        tmp.path().join("config.json"),
        config.replace("\"num_hidden_layers\": 6", "\"num_hidden_layers\": 7"),
    )
    .unwrap();
    let err = TextEncoder::load(tmp.path(), Device::Cpu, 32)
        .err()
        .expect("missing layer")
        .to_string();
    assert!(err.contains("missing weight `encoder.layer.6."), "{err}");

    std::fs::write(tmp.path().join("config.json"), &config).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(
        tmp.path().join("model.safetensors"),
        &bytes[..bytes.len() / 3],
    )
    .unwrap();
    let err = TextEncoder::load(tmp.path(), Device::Cpu, 32)
        .err()
        .expect("truncated")
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}
