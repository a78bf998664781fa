//! Plume's wire protocol: the worker-facing and user-facing gRPC services and their messages,
//! generated from `proto/plume.proto`.

#![allow(missing_docs, clippy::all)]

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("plume.v1");
}
