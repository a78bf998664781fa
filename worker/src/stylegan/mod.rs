//! StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"),
//! scaled by config. Read alongside NVlabs' `stylegan2-ada-pytorch/training/networks.py`
//! and rosinality's `stylegan2-pytorch/model.py`; the names here follow theirs.

pub mod augment;
pub mod discriminator;
pub mod generator;
pub mod import;
pub mod loss;
pub mod metrics;
pub mod pretrain;
pub mod scoring;
pub mod teacher;

pub use plume_jobs::NetworkConfig;
