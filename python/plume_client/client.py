"""The client: connection (endpoint and token found as the CLI finds them), the calls, and
protobuf messages turned into plain dicts and lists."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from typing import Any, Iterable, Optional, Union

import grpc

from ._gen import plume_pb2 as pb
from ._gen import plume_pb2_grpc as pb_grpc

# Experiment states whose runs are all over (the coordinator's `states` module).
_FINAL_EXPERIMENT_STATES = {
    "EXPERIMENT_STATE_SUCCEEDED",
    "EXPERIMENT_STATE_FAILED",
    "EXPERIMENT_STATE_CANCELLED",
}


class PlumeError(Exception):
    """A request the coordinator refused or could not answer; `code` is the gRPC status."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        self.code = code


def _endpoint_file(start: pathlib.Path) -> Optional[pathlib.Path]:
    """`.plume/coordinator.json`, which `plume up` writes, in `start` or a parent."""
    for d in [start, *start.parents]:
        f = d / ".plume" / "coordinator.json"
        if f.is_file():
            return f
    return None


def _value(field, v):
    """One field value as plain Python: enums by name, messages as dicts, 64-bit integers
    as ints (protobuf's own JSON form would make them strings)."""
    if field.enum_type is not None:
        e = field.enum_type.values_by_number.get(v)
        return e.name if e is not None else v
    if field.message_type is not None:
        return _to_dict(v)
    return v


def _repeated(field) -> bool:
    """Whether a field is repeated, on protobuf runtimes before and after 6 (which replaced
    `label` with `is_repeated`)."""
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == field.LABEL_REPEATED


def _to_dict(msg) -> dict:
    """A message as a dict with every field present, keyed by the proto's field names."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        v = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            vf = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _value(vf, x) for k, x in v.items()}
        elif _repeated(field):
            out[field.name] = [_value(field, x) for x in v]
        elif field.message_type is not None and not msg.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _value(field, v)
    return out


class Client:
    """A connection to one coordinator.

    `url` and `token` default to $PLUME_COORDINATOR and $PLUME_TOKEN, else to the
    `.plume/coordinator.json` that `plume up` wrote in this directory or a parent.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 60.0,
        cwd: Optional[Union[str, os.PathLike]] = None,
    ):
        url = url or os.environ.get("PLUME_COORDINATOR")
        token = token or os.environ.get("PLUME_TOKEN")
        if not url or not token:
            found = _endpoint_file(pathlib.Path(cwd or os.getcwd()).resolve())
            if found is None:
                raise PlumeError(
                    "no coordinator: pass url= and token=, set PLUME_COORDINATOR and "
                    "PLUME_TOKEN, or run `plume up` in this directory"
                )
            endpoint = json.loads(found.read_text())
            url = url or endpoint["url"]
            token = token or endpoint["user_token"]
        self.url = url
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),)
        target = url.split("://", 1)[-1].rstrip("/")
        options = [("grpc.max_receive_message_length", 64 << 20)]
        if url.startswith("https://"):
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options)
        else:
            channel = grpc.insecure_channel(target, options)
        self._channel = channel
        self._stub = pb_grpc.UserApiStub(channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, request):
        try:
            return getattr(self._stub, method)(
                request, metadata=self._metadata, timeout=self.timeout
            )
        except grpc.RpcError as e:  # unary calls raise here; streams raise while iterating
            raise PlumeError(e.details() or str(e), e.code()) from None

    def _stream(self, method: str, request) -> Iterable:
        try:
            yield from self._call(method, request)
        except grpc.RpcError as e:
            raise PlumeError(e.details() or str(e), e.code()) from None

    # ------------------------------------------------------------------ experiments

    def submit(
        self,
        file: Union[str, os.PathLike],
        *,
        dry_run: bool = False,
        extend: Optional[str] = None,
    ) -> dict:
        """Submits an experiment file (or with `extend`, adds its new runs to that
        experiment). Returns `experiment_id`, `name`, `runs` and, for an extension, the runs
        `reused` and `untouched`."""
        path = pathlib.Path(file)
        reply = self._call(
            "SubmitExperiment",
            pb.SubmitRequest(
                yaml=path.read_text(),
                file_name=str(path),
                dry_run=dry_run,
                extend=extend or "",
            ),
        )
        return _to_dict(reply)

    def experiments(self) -> list[dict]:
        """Every experiment, newest first: id, name, state, run_states, best_objective, ..."""
        return [_to_dict(e) for e in self._call("ListExperiments", pb.ListRequest()).experiments]

    def show(self, experiment: Union[str, int]) -> dict:
        """One experiment: `summary`, `runs` (state, step, metrics, attempts, rungs, queue
        position) and its `yaml`."""
        return _to_dict(self._call("GetExperiment", pb.GetRequest(experiment=str(experiment))))

    def wait(self, experiment: Union[str, int], timeout: Optional[float] = None, poll: float = 1.0) -> dict:
        """Blocks until the experiment ends; returns `show` of it. `TimeoutError` after
        `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            detail = self.show(experiment)
            if detail["summary"]["state"] in _FINAL_EXPERIMENT_STATES:
                return detail
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"experiment {experiment} still {detail['summary']['state']}")
            time.sleep(poll)

    def cancel(self, experiment: Union[str, int], run: Optional[str] = None) -> list[str]:
        """Cancels the unfinished runs (or one); returns the names cancelled."""
        reply = self._call("Cancel", pb.CancelRequest(experiment=str(experiment), run=run or ""))
        return list(reply.cancelled)

    # ------------------------------------------------------------------ results

    def best(
        self, experiment: Union[str, int], metric: Optional[str] = None, top: int = 5
    ) -> list[dict]:
        """The `top` checkpoints by `metric` (default: the objective), best first, each with
        checkpoint_id, run, step, value and every metric of the run at that step."""
        reply = self._call(
            "BestCheckpoints",
            pb.BestRequest(experiment=str(experiment), metric=metric or "", top=top),
        )
        return [_to_dict(c) for c in reply.checkpoints]

    def download(
        self, checkpoint_id: int, out: Union[str, os.PathLike], *, with_state: bool = False
    ) -> pathlib.Path:
        """Writes a checkpoint (weights; with `with_state` the resume state too) to `out`,
        checking its sha256; returns the path."""
        out = pathlib.Path(out)
        data = bytearray()
        sha = ""
        for chunk in self._stream(
            "DownloadCheckpoint",
            pb.DownloadRequest(checkpoint_id=checkpoint_id, with_state=with_state),
        ):
            data += chunk.data
            sha = chunk.sha256 or sha
        if hashlib.sha256(data).hexdigest() != sha:
            raise PlumeError(f"download of checkpoint {checkpoint_id} is corrupt (sha256 mismatch)")
        tmp = out.with_name(out.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(out)
        return out

    def metrics(
        self,
        experiment: Union[str, int],
        run: Optional[str] = None,
        metrics: Optional[list[str]] = None,
        *,
        frame: bool = False,
    ):
        """Every stored point of the experiment's metrics (optionally one run, some metrics),
        as a list of {run, metric, step, value} dicts, or with `frame=True` a pandas
        DataFrame with those columns (pandas must be installed)."""
        rows: list[dict[str, Any]] = []
        request = pb.WatchRequest(
            experiment=str(experiment), run=run or "", metrics=metrics or [], backlog_only=True
        )
        for u in self._stream("WatchMetrics", request):
            for step, value in zip(u.steps, u.values):
                rows.append({"run": u.run, "metric": u.name, "step": step, "value": value})
        if not frame:
            return rows
        try:
            import pandas as pd
        except ImportError as e:
            raise PlumeError("metrics(frame=True) needs pandas: pip install pandas") from e
        return pd.DataFrame(rows, columns=["run", "metric", "step", "value"])
