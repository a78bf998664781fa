//! Connecting to a coordinator: the address and token from flags, the environment, or the
//! file `plume up` writes (`$PLUME_HOME/coordinator.json`, default `.plume/`).

use anyhow::Context;
use plume_proto::v1 as pb;
use std::path::PathBuf;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// What `plume up` writes so that other commands find the coordinator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Token for the user API.
    pub user_token: String,
    /// Token for workers.
    pub worker_token: String,
}

/// `$PLUME_HOME`, else `.plume` in the current directory.
pub fn home() -> PathBuf {
    std::env::var_os("PLUME_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".plume"))
}

impl Endpoint {
    /// Reads the endpoint file of `home`.
    pub fn load(home: &std::path::Path) -> anyhow::Result<Endpoint> {
        let path = home.join("coordinator.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no coordinator address: pass --coordinator and --token, or run `plume up` (it writes {})",
                path.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// Writes `text` to `path` readable by this user only (mode 0600 from creation, never
/// world-readable for a moment), replacing it atomically: for files that hold tokens.
pub fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    if let Some(d) = dir {
        let _ = std::fs::File::open(d).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl Auth {
    /// A bearer-token interceptor; fails on a token that is not printable ASCII.
    pub fn bearer(token: &str) -> anyhow::Result<Auth> {
        Ok(Auth(format!("Bearer {token}").parse()?))
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

/// The user API client type.
pub type UserClient = pb::user_api_client::UserApiClient<InterceptedService<Channel, Auth>>;

/// Connects to the user API. For an `https://` URL the server's certificate is checked
/// against `$PLUME_CA_CERT` (a PEM file) when set, else against the system roots.
pub async fn user_client(url: &str, token: &str) -> anyhow::Result<UserClient> {
    let ca = std::env::var_os("PLUME_CA_CERT").map(PathBuf::from);
    user_client_with_ca(url, token, ca.as_deref()).await
}

/// Connects to the user API, trusting `ca` for TLS.
pub async fn user_client_with_ca(
    url: &str,
    token: &str,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<UserClient> {
    let channel = plume_proto::endpoint(url, ca)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {url}"))?;
    let auth = Auth::bearer(token)?;
    Ok(
        pb::user_api_client::UserApiClient::with_interceptor(channel, auth)
            .max_decoding_message_size(64 << 20),
    )
}
