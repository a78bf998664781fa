//! Layered settings through the real binaries: the user's `plume.toml` under the project's,
//! under `PLUME_*` variables, under flags; `config` says where each value came from and never
//! prints a token; a bad value names its source and key, and an unknown key is refused.

use plume_system_tests::bin;
use std::path::Path;
use std::process::Command;

/// Runs `binary ARGS` in `cwd` with only the given `PLUME_*` variables and a private config
/// dir; (exit code, stdout, stderr).
fn run(binary: &str, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(bin(binary));
    c.args(args).current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("PLUME_") || k == "DATABASE_URL" {
            c.env_remove(k);
        }
    }
    c.env("XDG_CONFIG_HOME", cwd.join("user-config"));
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line of `key` in a `config` report.
fn line<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no {key} in\n{report}"))
}

#[test]
fn flags_beat_variables_beat_the_project_file_beats_the_user_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("user-config/plume")).unwrap();
    std::fs::write(
        d.join("user-config/plume/plume.toml"),
        "[worker]\nname = \"from-user\"\nwork_dir = \"user-dir\"\nidle_exit = 60\n",
    )
    .unwrap();
    std::fs::write(
        d.join("plume.toml"),
        "[worker]\nwork_dir = \"project-dir\"\nslots = 3\ntoken = \"file-secret-token\"\n\
         [plume]\nworkers = 3\n",
    )
    .unwrap();
    let (code, out, err) = run(
        "plume-worker",
        d,
        &[("PLUME_SLOTS", "4"), ("PLUME_IDLE_EXIT", "90")],
        &["--idle-exit", "120", "config"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let user = d.join("user-config/plume/plume.toml");
    let project = d.join("plume.toml");
    assert!(line(&out, "name").contains("from-user"), "{out}");
    assert!(
        line(&out, "name").ends_with(&user.display().to_string()),
        "{out}"
    );
    assert!(line(&out, "work_dir").contains("project-dir"), "{out}");
    assert!(
        line(&out, "work_dir").ends_with(&project.display().to_string()),
        "{out}"
    );
    assert!(line(&out, "slots").contains('4'), "{out}");
    assert!(
        line(&out, "slots").ends_with("environment (PLUME_SLOTS)"),
        "{out}"
    );
    assert!(line(&out, "idle_exit").contains("120"), "{out}");
    assert!(line(&out, "idle_exit").ends_with("flag"), "{out}");
    assert!(line(&out, "device").ends_with("default"), "{out}");
    assert!(line(&out, "token").contains("(set; not shown)"), "{out}");
    assert!(
        !out.contains("file-secret-token"),
        "a token was printed:\n{out}"
    );

    let (code, out, err) = run("plume", d, &[], &["config"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(line(&out, "workers").contains('3'), "{out}");
    assert!(
        line(&out, "workers").ends_with(&project.display().to_string()),
        "{out}"
    );
}

#[test]
fn a_bad_setting_names_its_source_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("plume.toml"), "[worker]\nslots = 100\n").unwrap();
    let (code, _, err) = run("plume-worker", d, &[], &["config"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plume.toml: worker.slots = \"100\""), "{err}");

    std::fs::write(d.join("plume.toml"), "[worker]\nslot = 2\n").unwrap();
    let (code, _, err) = run("plume-worker", d, &[], &["config"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown key worker.slot"), "{err}");

    std::fs::write(d.join("plume.toml"), "[plume]\nworkers = \"many\"\n").unwrap();
    let (code, _, err) = run("plume", d, &[], &["ls"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("plume.toml: plume.workers = \"many\""),
        "{err}"
    );

    std::fs::remove_file(d.join("plume.toml")).unwrap();
    let (code, _, err) = run("plume-worker", d, &[("PLUME_SLOTS", "abc")], &["config"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("environment variable PLUME_SLOTS: worker.slots = \"abc\""),
        "{err}"
    );

    std::fs::write(d.join("plume.toml"), "[plume\nworkers = 1\n").unwrap();
    let (code, _, err) = run("plume", d, &[], &["config"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plume.toml"), "{err}");
}
