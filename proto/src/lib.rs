//! Plume's wire protocol: the worker-facing and user-facing gRPC services and their messages,
//! generated from `proto/plume.proto`.

#![allow(missing_docs, clippy::all)]

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("plume.v1");
}

/// JSON names of the state enums, for the dashboard's API (which serialises the gRPC replies):
/// the value's name without its type prefix, lowercase (`RUN_STATE_SUCCEEDED` is
/// `succeeded`); `unspecified` for 0 or an unknown number.
pub mod json {
    use super::v1::{AttemptState, ExperimentState, RunState};
    use serde::Serializer;

    fn name(full: Option<&str>, prefix: &str) -> String {
        full.map_or("unspecified".into(), |n| {
            n.trim_start_matches(prefix).to_ascii_lowercase()
        })
    }

    /// A `RunState` field.
    pub fn run_state<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        let full = RunState::try_from(*v).ok().map(|e| e.as_str_name());
        s.serialize_str(&name(full, "RUN_STATE_"))
    }

    /// An `ExperimentState` field.
    pub fn experiment_state<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        let full = ExperimentState::try_from(*v).ok().map(|e| e.as_str_name());
        s.serialize_str(&name(full, "EXPERIMENT_STATE_"))
    }

    /// An `AttemptState` field.
    pub fn attempt_state<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        let full = AttemptState::try_from(*v).ok().map(|e| e.as_str_name());
        s.serialize_str(&name(full, "ATTEMPT_STATE_"))
    }
}

/// A client endpoint for `url`, shared by the CLI and the worker: TCP no-delay (small replies
/// would otherwise wait ~40 ms for the peer's delayed ACK) and, for `https://`, TLS that
/// trusts the PEM certificate `ca` (e.g. a private CA) as well as the platform's roots.
pub fn endpoint(
    url: &str,
    ca: Option<&std::path::Path>,
) -> Result<tonic::transport::Endpoint, Box<dyn std::error::Error + Send + Sync>> {
    let mut e = tonic::transport::Channel::from_shared(url.to_string())?.tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .map_err(|err| format!("reading CA certificate {}: {err}", ca.display()))?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        e = e.tls_config(tls)?;
    }
    Ok(e)
}
