//! Plume's coordinator: turns experiment YAML into runs, hands them to workers over gRPC,
//! stores everything they report in Postgres, and answers the CLI. It never links libtorch.

#![warn(missing_docs)]

pub mod bench;
pub mod blobs;
pub mod chaos;
pub mod client;
pub mod downsample;
pub mod experiment;
pub mod follow;
pub mod pg;
pub mod server;
pub mod slurm;
pub mod states;
pub mod store;
pub mod table;
pub mod web;
