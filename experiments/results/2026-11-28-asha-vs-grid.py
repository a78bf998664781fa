"""The ASHA-vs-exhaustive table of experiments/results/2026-11-28-asha-vs-grid.md, read through
the Python client from the coordinator that ran both experiments (`plume up` in this checkout)."""
from plume_client import Client
c = Client()
out = {}
for e in ["m3-search-grid", "m3-search-asha"]:
    d = c.show(e)
    runs = [r for r in d["runs"] if r["job_kind"] == "train-text"]
    secs = sum(a["ended_unix"] - a["started_unix"] for r in runs for a in r["attempts"] if a["ended_unix"])
    stage_secs = sum(a["ended_unix"] - a["started_unix"] for r in d["runs"] if r["job_kind"] != "train-text" for a in r["attempts"] if a["ended_unix"])
    steps = sum(r["step"] for r in runs)
    df = c.metrics(e, metrics=["eval/score"], frame=True)
    df = df[df.run.str.startswith("m3@")]
    i = df["value"].idxmax()
    best_ckpt = c.best(e, top=1)[0]
    states = {}
    for r in runs: states[r["state"]] = states.get(r["state"], 0) + 1
    # Where ASHA stopped runs: the step of the rung that did not promote each.
    stopped_at = {}
    for r in runs:
        for g in r["rungs"]:
            if not g["promoted"]:
                stopped_at[g["step"]] = stopped_at.get(g["step"], 0) + 1
    out[e] = dict(secs=secs, stage_secs=stage_secs, steps=steps, runs=len(runs), states=states,
                  stopped_at=stopped_at,
                  best=df.loc[i, "value"], best_run=df.loc[i, "run"], best_step=int(df.loc[i, "step"]),
                  ckpt=best_ckpt["value"], ckpt_run=best_ckpt["run"], ckpt_step=best_ckpt["step"])
    print(e, out[e])
    # Per-run wall time by how far the run went (the cost model in the results file).
    by_steps = {}
    for r in runs:
        t = sum(x["ended_unix"] - x["started_unix"] for x in r["attempts"] if x["ended_unix"])
        by_steps.setdefault(r["step"], []).append(t)
    print("  seconds per run by final step:", {k: (min(v), max(v)) for k, v in sorted(by_steps.items())})
g, a = out["m3-search-grid"], out["m3-search-asha"]
print(f"worker-seconds ratio {a['secs']/g['secs']:.3f}; steps ratio {a['steps']/g['steps']:.3f}; best gap {g['best']-a['best']:+.4f}; checkpoint gap {g['ckpt']-a['ckpt']:+.4f}")
