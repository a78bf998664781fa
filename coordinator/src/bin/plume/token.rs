//! `plume token rotate`: a new user or worker token, the old one refused after a grace
//! period. The coordinator stores only hashes; the new token reaches the user's own files.

use super::*;

/// `plume token` subcommands.
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Replace the user token (or with --worker the worker token). The old one stops working
    /// after --grace seconds. The new token goes to `plume up`'s endpoint file when that is
    /// how this command connected, and to --write FILE; otherwise it is printed.
    Rotate(RotateArgs),
}

/// Arguments of `plume token rotate`.
#[derive(clap::Args)]
pub struct RotateArgs {
    /// Rotate the worker token instead of the user token.
    #[arg(long)]
    pub worker: bool,
    /// Seconds the old token keeps working (workers mid-run keep theirs until they
    /// reconnect: give them longer than the longest run, or restart them).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=604_800))]
    pub grace: u32,
    /// Also write the new token to this file, readable by you only (for example the Slurm
    /// launcher's --slurm-token-file, or a worker's --token-file).
    #[arg(long)]
    pub write: Option<PathBuf>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `plume token ...`.
pub async fn token_command(cmd: TokenCmd) -> Result<()> {
    let TokenCmd::Rotate(RotateArgs {
        worker,
        grace,
        write,
        conn,
    }) = cmd;
    // Connecting through the endpoint file means that file is where the token lives.
    let endpoint_file = (conn.coordinator.is_none() || conn.token.is_none())
        .then(|| Endpoint::load(&home()).ok())
        .flatten();
    let mut c = connect(&conn).await?;
    let (role, name) = if worker {
        (pb::TokenRole::Worker, "worker")
    } else {
        (pb::TokenRole::User, "user")
    };
    let reply = c
        .rotate_token(pb::RotateTokenRequest {
            role: role.into(),
            grace_secs: grace,
        })
        .await
        .map_err(grpc)?
        .into_inner();
    let mut saved = vec![];
    if let Some(mut e) = endpoint_file {
        if worker {
            e.worker_token = reply.token.clone();
        } else {
            e.user_token = reply.token.clone();
        }
        saved.push(crate::cluster::write_endpoint(&home(), &e)?);
    }
    if let Some(path) = write {
        write_private(&path, &format!("{}\n", reply.token))?;
        saved.push(path);
    }
    let old = if grace == 0 {
        "the old one is refused from now on".to_string()
    } else {
        format!("the old one keeps working for {grace} s, then is refused")
    };
    if saved.is_empty() {
        eprintln!(
            "new {name} token below (shown once; the coordinator keeps only its hash); {old}"
        );
        println!("{}", reply.token);
    } else {
        let files: Vec<String> = saved.iter().map(|p| p.display().to_string()).collect();
        eprintln!("new {name} token written to {}; {old}", files.join(" and "));
    }
    Ok(())
}
