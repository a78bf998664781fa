//! Plume's worker: the ML of text-guided bird editing on libtorch (through `tch`) and the
//! job runner that executes it.
//!
//! - [`dataset`]: the CUB-layout loader and the `synthetic-birds` renderer;
//! - [`stylegan`]: StyleGAN2 and its `pretrain-generator` job;
//! - [`judge`]: the critic and the judge (`train-judge`) and judge-FID;
//! - [`styles`]: w_gt of the images (`invert`) and the styles file;
//! - [`text`]: the BERT text encoder;
//! - [`job`]: the seam every job kind uses ([`job::Reporter`], [`job::CancelToken`], the one
//!   [`job::step_loop`]) and the local-directory reporter;
//! - [`runner`]: dispatches a job spec to its kind;
//! - [`venv`]: finding the set-up Python venv;
//! - [`nn`]: layers, Adam with saveable state, checkpoint files;
//! - [`picture`]: sample grids and contact sheets;
//! - [`bench`]: `plume-worker bench`;
//! - [`remote`]: the worker as a coordinator's client (gRPC reporter, session, uploads).
#![deny(missing_docs)]

pub mod bench;
pub mod dataset;
pub mod job;
pub mod judge;
pub mod nn;
pub mod picture;
pub mod probe;
pub mod remote;
pub mod runner;
pub mod slots;
pub mod stylegan;
pub mod styles;
pub mod text;
pub mod venv;

/// Parses a device name: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA if available).
pub fn parse_device(s: &str) -> Result<tch::Device, String> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cuda" => Ok(tch::Device::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(tch::Device::Cuda(i)),
            _ => Err(format!(
                "unknown device {s:?}: expected cpu, cuda, cuda:N or auto"
            )),
        },
    }
}
