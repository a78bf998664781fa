"""Plume from Python: what a notebook needs of a coordinator.

    from plume_client import Client
    c = Client()                         # the `plume up` of this directory, or PLUME_COORDINATOR
    exp = c.submit("experiments/quickstart.yaml")
    c.wait(exp["name"])
    c.best(exp["name"], top=3)
    c.metrics(exp["name"], metrics=["eval/score"], frame=True)   # a pandas DataFrame

Every call is one gRPC request to the coordinator's user API, with the same token the `plume`
CLI uses; errors raise `PlumeError` with the coordinator's message.
"""

from .client import Client, PlumeError

__all__ = ["Client", "PlumeError"]
