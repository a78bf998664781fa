//! Token rotation through a real `plume serve` and the `plume` CLI: the database holds only
//! SHA-256 hashes; `plume token rotate` refuses the old user token at once (gRPC and
//! dashboard); a worker token rotated with a grace period keeps working until it ends; and a
//! restart with the old token in the environment does not revive it.

use plume_coordinator::client::user_client;
use plume_coordinator::pg::free_port;
use plume_coordinator::store::{token_hash, Store};
use plume_proto::v1 as pb;
use plume_system_tests::{bin, coordinator, postgres, wait_for, USER, WORKER};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `plume token rotate ARGS` against the coordinator at `url` with user token `token`.
fn rotate(url: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("plume"))
        .args(["token", "rotate", "--coordinator", url, "--token", token])
        .args(args)
        .env_remove("PLUME_HOME")
        .output()
        .unwrap()
}

fn read_token(path: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{} is readable by others", path.display());
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// Whether the user API accepts `token`.
async fn user_ok(url: &str, token: &str) -> bool {
    let mut c = user_client(url, token).await.unwrap();
    match c.list_experiments(pb::ListRequest {}).await {
        Ok(_) => true,
        Err(e) if e.code() == tonic::Code::Unauthenticated => false,
        Err(e) => panic!("{e:?}"),
    }
}

/// Whether the worker API accepts `token`.
async fn worker_ok(url: &str, token: &str) -> bool {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let mut c = pb::worker_api_client::WorkerApiClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    );
    match c
        .register(pb::RegisterRequest {
            name: "probe".into(),
            capabilities: None,
        })
        .await
    {
        Ok(_) => true,
        Err(e) if e.code() == tonic::Code::Unauthenticated => false,
        Err(e) => panic!("{e:?}"),
    }
}

/// The dashboard API's status for `token`.
fn dashboard_status(http: u16, token: &str) -> u16 {
    match ureq::get(&format!("http://127.0.0.1:{http}/api/experiments"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tokens_are_refused_and_only_hashes_are_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pg = postgres(d.join("pg")).await;
    let store = Store::connect(&pg.url, Duration::from_secs(4))
        .await
        .unwrap();
    let (port, http) = (free_port().unwrap(), free_port().unwrap());
    let log = d.join("coordinator.log");
    let mut coord = coordinator(&pg.url, port, Some(http), &log);
    let url = format!("http://127.0.0.1:{port}");
    wait_for("the coordinator", 30, || {
        let url = url.clone();
        async move { user_client(&url, USER).await.is_ok() }
    })
    .await;

    // Only hashes in the database.
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT role, sha256 FROM tokens ORDER BY role")
            .fetch_all(&store.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("user".to_string(), token_hash(USER).to_vec()),
            ("worker".to_string(), token_hash(WORKER).to_vec())
        ]
    );
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM tokens t")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert!(!dump.contains(USER) && !dump.contains(WORKER), "{dump}");
    assert!(user_ok(&url, USER).await);
    assert_eq!(dashboard_status(http, USER), 200);

    // User token: the old one is refused at once, on gRPC and on the dashboard.
    let user_file = d.join("user-token");
    let out = rotate(&url, USER, &["--write", user_file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "a token written to a file is not printed too"
    );
    let new_user = read_token(&user_file);
    assert_eq!(new_user.len(), 64);
    assert!(!user_ok(&url, USER).await);
    assert_eq!(dashboard_status(http, USER), 401);
    assert!(user_ok(&url, &new_user).await);
    assert_eq!(dashboard_status(http, &new_user), 200);
    // The old token cannot rotate either.
    assert!(!rotate(&url, USER, &[]).status.success());

    // Worker token with a grace period: both work until it ends, then only the new one.
    let worker_file = d.join("worker-token");
    let out = rotate(
        &url,
        &new_user,
        &[
            "--worker",
            "--grace",
            "3",
            "--write",
            worker_file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_worker = read_token(&worker_file);
    assert!(worker_ok(&url, WORKER).await, "within the grace period");
    assert!(worker_ok(&url, &new_worker).await);
    assert!(
        !user_ok(&url, &new_worker).await,
        "a worker token is not a user token"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!worker_ok(&url, WORKER).await, "after the grace period");
    assert!(worker_ok(&url, &new_worker).await);

    // A grace period out of range is refused by the CLI and by the server.
    let out = rotate(&url, &new_user, &["--grace", "999999999"]);
    assert!(!out.status.success());
    let mut c = user_client(&url, &new_user).await.unwrap();
    let e = c
        .rotate_token(pb::RotateTokenRequest {
            role: pb::TokenRole::User.into(),
            grace_secs: 8 * 86_400,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        user_ok(&url, &new_user).await,
        "a refused rotation changes nothing"
    );

    // A restart with the old tokens in its environment does not bring them back.
    coord.0.kill().unwrap();
    coord.0.wait().unwrap();
    let _coord = coordinator(&pg.url, port, Some(http), &log);
    wait_for("the restarted coordinator", 30, || {
        let (url, t) = (url.clone(), new_user.clone());
        async move { user_client(&url, &t).await.is_ok() && user_ok(&url, &t).await }
    })
    .await;
    assert!(!user_ok(&url, USER).await);
    assert!(!worker_ok(&url, WORKER).await);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("rotated away"), "{text}");
}
