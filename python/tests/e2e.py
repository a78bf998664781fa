"""The Python client end to end against a real coordinator and worker (started by
tests/tests/python_client.rs, which sets PLUME_COORDINATOR, PLUME_TOKEN and passes a scratch
directory): submit, list, show, wait, best, download, metrics as rows and as a DataFrame, an
extension, and a refused request raising PlumeError. Exits non-zero on the first failure."""

import pathlib
import sys

from plume_client import Client, PlumeError

EXPERIMENT = """name: py
dataset: {kind: synthetic-birds, images: 200, resolution: 32, seed: 3}
runs:
  - {name: p, job: probe, steps: 4, slope: 0.1, checkpoint_every: 2}
sweep:
  start: [0.5, 2]
objective: {metric: probe/score, mode: max}
"""


def main(scratch: pathlib.Path) -> None:
    c = Client()
    path = scratch / "py.yaml"
    path.write_text(EXPERIMENT)

    plan = c.submit(path, dry_run=True)
    assert [r["name"] for r in plan["runs"]] == ["p@start=5e-1", "p@start=2"], plan

    exp = c.submit(path)
    assert exp["name"] == "py" and exp["experiment_id"] > 0, exp
    assert [e["name"] for e in c.experiments()] == ["py"]

    detail = c.wait("py", timeout=60)
    assert detail["summary"]["state"] == "EXPERIMENT_STATE_SUCCEEDED", detail["summary"]
    steps = {r["name"]: r["step"] for r in detail["runs"]}
    assert steps == {"p@start=5e-1": 4, "p@start=2": 4}, steps

    # probe/score = start + 0.1 * step: the best is start=2 at step 4, 2.4.
    best = c.best("py", top=1)
    assert best[0]["run"] == "p@start=2" and abs(best[0]["value"] - 2.4) < 1e-9, best
    out = c.download(best[0]["checkpoint_id"], scratch / "best.safetensors")
    assert out.stat().st_size > 0

    rows = c.metrics("py", run="p@start=5e-1", metrics=["probe/score"])
    assert [(r["step"], round(r["value"], 9)) for r in rows] == [
        (1, 0.6),
        (2, 0.7),
        (3, 0.8),
        (4, 0.9),
    ], rows
    frame = c.metrics("py", metrics=["probe/score"], frame=True)
    assert list(frame.columns) == ["run", "metric", "step", "value"]
    assert len(frame) == 8 and abs(frame["value"].max() - 2.4) < 1e-9, frame

    path.write_text(EXPERIMENT.replace("start: [0.5, 2]", "start: [0.5, 2, 3]"))
    ext = c.submit(path, extend="py")
    assert [r["name"] for r in ext["runs"]] == ["p@start=3"], ext
    assert sorted(ext["reused"]) == ["p@start=2", "p@start=5e-1"], ext
    c.wait("py", timeout=60)
    assert c.best("py", top=1)[0]["run"] == "p@start=3"

    try:
        c.show("no-such-experiment")
    except PlumeError as e:
        assert "no-such-experiment" in str(e) or "no experiment" in str(e), e
    else:
        raise AssertionError("show of an unknown experiment did not raise")
    print("python client: every check passed")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
