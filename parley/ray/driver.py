"""`parley api --ray-address`: the API as a process of its own (not behind Serve's HTTP proxy) that joins a Ray
cluster as a driver and reaches the model applications through their deployment handles, as the ingress does.
One Ray hop a streamed piece instead of two: what benchmarks/ray_vs_plain.py measures against the ingress."""

from __future__ import annotations

import logging

import ray

from parley.ray.cluster import ServeCluster
from parley.ray.ingress import model_applications

log = logging.getLogger("parley.ray")


def serve_cluster(address: str, name: str, silence_s: float) -> ServeCluster:
    """Join the cluster at `address` (its GCS, e.g. 10.0.0.5:6379, or `auto`) and find the models of the parley
    deployed under `name`."""
    ray.init(address=address, namespace="serve", log_to_driver=False, logging_level=logging.WARNING)
    log.info("joined the Ray cluster at %s; models from its applications %s-model-*", address, name)
    handles: dict = {}

    async def discover():
        nonlocal handles
        handles = await model_applications(f"{name}-model-", handles)
        return handles

    return ServeCluster(discover, silence_s=silence_s)
