//! A one-node Slurm cluster on localhost for the launcher's system test: `munged`,
//! `slurmctld` and `slurmd` in the foreground as children, with a generated `slurm.conf`
//! (CPUs only, no GRES, no cgroups) and everything under one directory. Dropping it cancels
//! its jobs and stops the daemons.

use crate::Kill;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The daemons of a private Slurm cluster.
pub struct SlurmCluster {
    /// Its `slurm.conf`: give it to Slurm's commands as `SLURM_CONF`.
    pub conf: PathBuf,
    daemons: Vec<Kill>,
}

/// A daemon binary, or a clear failure naming the set-up step that installs it.
fn daemon(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} is not installed: run ./scripts/setup as root (it installs Debian's \
         slurm-wlm and munge)"
    );
}

fn spawn(program: &Path, args: &[&str], log: &Path) -> Kill {
    let log = std::fs::File::create(log).unwrap();
    Kill(
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display())),
    )
}

impl SlurmCluster {
    /// Starts a cluster in `dir` whose one node has this machine's CPUs. The daemons run as
    /// root (Slurm's `SlurmdUser` must be able to start jobs as the submitting user).
    pub fn start(dir: &Path) -> SlurmCluster {
        let munge = dir.join("munge");
        for d in ["munge", "state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&munge, std::fs::Permissions::from_mode(0o711)).unwrap();
        let key = munge.join("key");
        let mut bytes = [0u8; 1024];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").unwrap(),
            &mut bytes,
        )
        .unwrap();
        std::fs::write(&key, bytes).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let socket = munge.join("socket");
        let s = |p: &Path| p.display().to_string();
        let mut daemons = vec![spawn(
            &daemon("munged"),
            &[
                "--foreground",
                "--force",
                &format!("--key-file={}", s(&key)),
                &format!("--socket={}", s(&socket)),
                &format!("--pid-file={}", s(&munge.join("pid"))),
                &format!("--seed-file={}", s(&munge.join("seed"))),
                &format!("--log-file={}", s(&munge.join("log"))),
            ],
            &dir.join("log/munged.out"),
        )];
        wait_until("munged's socket", 20, || socket.exists());
        let conf = write_conf(dir, &socket);
        let c = s(&conf);
        daemons.push(spawn(
            &daemon("slurmctld"),
            &["-D", "-i", "-f", &c],
            &dir.join("log/slurmctld.out"),
        ));
        daemons.push(spawn(
            &daemon("slurmd"),
            &["-D", "-f", &c],
            &dir.join("log/slurmd.out"),
        ));
        let cluster = SlurmCluster { conf, daemons };
        wait_until("the Slurm node to be idle", 60, || {
            cluster
                .command("sinfo", &["--noheader", "--format=%t"])
                .is_some_and(|o| o.trim() == "idle")
        });
        cluster
    }

    /// Runs a Slurm client command against this cluster; its output, or `None` on failure.
    pub fn command(&self, program: &str, args: &[&str]) -> Option<String> {
        let out = Command::new(program)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The ids and states (`%T`) of the jobs named `name`.
    pub fn jobs(&self, name: &str) -> Vec<(String, String)> {
        self.command("squeue", &["--noheader", "--name", name, "--format=%i %T"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (id, st) = l.trim().split_once(' ')?;
                Some((id.to_string(), st.to_string()))
            })
            .collect()
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        // Cancelled jobs must be gone before slurmd is: a job step still running when slurmd
        // dies is orphaned with its worker (a failed test left both behind). Slurm sends
        // SIGKILL `KillWait` (10 s) after SIGTERM.
        let _ = self.command("scancel", &["--full", "--user=root"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && self
                .command("squeue", &["--noheader", "--format=%i"])
                .is_some_and(|out| !out.trim().is_empty())
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        // slurmd before slurmctld before munged.
        while let Some(d) = self.daemons.pop() {
            drop(d);
        }
    }
}

/// A `slurm.conf` in `dir` for one node on localhost with this machine's CPUs, no GRES and
/// no cgroups, authenticated by the munged at `socket`.
fn write_conf(dir: &Path, socket: &Path) -> PathBuf {
    let s = |p: &Path| p.display().to_string();
    let host = hostname();
    let (ctl_port, node_port) = (free_port(), free_port());
    let conf = dir.join("slurm.conf");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::fs::write(
        &conf,
        format!(
            "ClusterName=plumetest\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={ctl_port}\n\
             SlurmdPort={node_port}\n\
             AuthType=auth/munge\n\
             AuthInfo=socket={socket}\n\
             CryptoType=crypto/munge\n\
             MpiDefault=none\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             SchedulerType=sched/backfill\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={dir}/slurmctld.pid\n\
             SlurmdPidFile={dir}/slurmd.pid\n\
             SlurmctldLogFile={dir}/log/slurmctld.log\n\
             SlurmdLogFile={dir}/log/slurmd.log\n\
             ReturnToService=2\n\
             KillWait=10\n\
             MinJobAge=10\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN\n\
             PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP \
             OverSubscribe=FORCE:8\n",
            socket = s(socket),
            state = s(&dir.join("state")),
            spool = s(&dir.join("spool")),
            dir = s(dir),
        ),
    )
    .unwrap();
    conf
}

fn hostname() -> String {
    let out = Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    plume_coordinator::pg::free_port().unwrap()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
