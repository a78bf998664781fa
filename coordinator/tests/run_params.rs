//! A run's method and ablation/sweep values are stored as data when the experiment is
//! submitted (with a real PostgreSQL), and migration 0005 fills them in for runs stored before
//! it, from their names and configs.

use plume_coordinator::store::Store;
use std::collections::BTreeMap;
use std::time::Duration;

use plume_coordinator::pg::PrivatePostgres;

const YAML: &str = "name: params
dataset: {kind: cub, path: x}
stages:
  judge: {job: train-judge, steps: 2}
  generator: {job: pretrain-generator, needs: [judge], steps: 2}
  styles: {job: invert, needs: [generator, judge], steps: 2}
runs:
  - name: m3
    job: train-text
    method: contrastive
    needs: [generator, styles, judge]
    steps: 2
    ablate: {losses.preservation: [0, 1]}
sweep: {lr_heads: [0.001]}
objective: {metric: eval/score, mode: max}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_carry_their_method_and_values_and_old_runs_get_them_from_the_migration() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = PrivatePostgres::start_in_background(tmp.path().join("pg"))
        .await
        .unwrap();
    let store = Store::connect(&pg.url, Duration::from_secs(30))
        .await
        .unwrap();
    let exp = plume_coordinator::experiment::parse("params.yaml", YAML).unwrap();
    let (id, _) = store.submit(&exp, "params.yaml", YAML).await.unwrap();
    let runs = store.runs(id).await.unwrap();
    let m3 = runs
        .iter()
        .find(|r| r.name == "m3@losses.preservation=1,lr_heads=1e-3")
        .unwrap_or_else(|| panic!("{:?}", runs.iter().map(|r| &r.name).collect::<Vec<_>>()));
    assert_eq!(m3.method.as_deref(), Some("contrastive"));
    let expected: BTreeMap<String, String> = [
        ("losses.preservation".to_string(), "1".to_string()),
        ("lr_heads".to_string(), "1e-3".to_string()),
    ]
    .into();
    assert_eq!(m3.params, expected);
    let judge = runs.iter().find(|r| r.name == "judge").unwrap();
    assert!(judge.method.is_none() && judge.params.is_empty());

    // A run as stored before migration 0005: no method, no params. The migration's own
    // statements fill them in from the name and the config.
    sqlx::query("UPDATE runs SET method = NULL, params = '{}'::jsonb WHERE experiment_id = $1")
        .bind(id)
        .execute(&store.pool)
        .await
        .unwrap();
    let migration = include_str!("../../migrations/0005_run_params.sql");
    for statement in migration.split(';').map(str::trim) {
        let sql: String = statement
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if sql.trim_start().starts_with("UPDATE") {
            sqlx::query(&sql).execute(&store.pool).await.unwrap();
        }
    }
    let again = store.runs(id).await.unwrap();
    for (before, after) in runs.iter().zip(&again) {
        assert_eq!(before.name, after.name);
        assert_eq!(before.method, after.method, "{}", after.name);
        assert_eq!(before.params, after.params, "{}", after.name);
    }
}
