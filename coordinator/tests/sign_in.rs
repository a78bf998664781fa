//! The dashboard's sign-in is rate-limited per address: wrong tokens, at `POST /api/login`
//! or as a bearer header, lock the address out (429) for the window, then it may try again.
//! Real Postgres, the real HTTP server in process.

use plume_coordinator::pg::PrivatePostgres;
use plume_coordinator::server::{Config, Coordinator, Intervals, Limits};
use plume_coordinator::store::Store;
use std::time::Duration;

fn login(base: &str, token: &str) -> u16 {
    match ureq::post(&format!("{base}/api/login"))
        .send_string(&format!("{{\"token\": \"{token}\"}}"))
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    }
}

/// The `Retry-After` of a refused sign-in, in seconds.
fn retry_after(base: &str) -> Option<u64> {
    match ureq::post(&format!("{base}/api/login")).send_string("{\"token\": \"x\"}") {
        Err(ureq::Error::Status(429, r)) => r.header("Retry-After")?.parse().ok(),
        _ => None,
    }
}

fn list_with(base: &str, token: &str) -> u16 {
    match ureq::get(&format!("{base}/api/experiments"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_lock_an_address_out_for_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = PrivatePostgres::start_in_background(tmp.path().join("pg"))
        .await
        .unwrap();
    let store = Store::connect(&pg.url, Duration::from_secs(5))
        .await
        .unwrap();
    let coordinator = Coordinator::start(
        store,
        Config {
            worker_token: Some("worker-token".into()),
            user_token: Some("user-token".into()),
            token_mode: plume_coordinator::store::SeedMode::Replace,
            intervals: Intervals {
                sign_in_window: Duration::from_secs(2),
                ..Intervals::default()
            },
            limits: Limits {
                sign_in_failures: 3,
                ..Limits::default()
            },
        },
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let web = tokio::spawn(plume_coordinator::web::serve(
        coordinator,
        listener,
        std::future::pending(),
    ));
    let b = base.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(login(&b, "user-token"), 204, "the right token signs in");
        assert_eq!(login(&b, "guess-1"), 401);
        assert_eq!(
            list_with(&b, "guess-2"),
            401,
            "a wrong bearer token is a failure too"
        );
        assert_eq!(login(&b, "guess-3"), 401);
        // Three failures in the window: the address is refused, even with the right token.
        assert_eq!(login(&b, "guess-4"), 429);
        assert_eq!(login(&b, "user-token"), 429);
        assert_eq!(list_with(&b, "user-token"), 429);
        let wait = retry_after(&b).expect("a 429 says when to retry");
        assert!(
            (1..=3).contains(&wait),
            "Retry-After {wait} s for a 2 s window"
        );
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(login(&b, "user-token"), 204, "the window passed");
        assert_eq!(list_with(&b, "user-token"), 200);
    })
    .await
    .unwrap();
    web.abort();
}
