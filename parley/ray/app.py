"""parley's Ray Serve application: `import_path: parley.ray.app:build` in a Serve config (what `parley ray deploy`,
`serve deploy` and KubeRay's RayService take), its `args` as parley.ray.config.AppArgs reads them.

Each model is one deployment, `ModelReplica` (a parley worker's engine per replica) with the config's replicas or
autoscaling and actor resources; the ingress (`Ingress`: the API and the web UI) holds a handle to each. A
deployment is named after its model, so a changed config updates it in place (a rolling update that lets the
replicas being replaced finish their replies) rather than replacing it.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from parley.cli.worker_cmd import parse_worker_flags
from parley.ray.config import AppArgs, check, deployment_names, flags_to_argv
from parley.ray.ingress import Ingress
from parley.ray.replica import ModelReplica


def build(args: dict[str, Any]) -> Application:
    spec = AppArgs.model_validate(args)
    check(spec)
    models = []
    for name, model in zip(deployment_names(spec.models), spec.models):
        argv = flags_to_argv(model.worker)
        concurrency = parse_worker_flags(argv).limit_worker_concurrency
        options: dict[str, Any] = {
            "name": name, "ray_actor_options": model.ray_actor_options,
            "max_ongoing_requests": model.max_ongoing_requests or concurrency,
            "max_queued_requests": model.max_queued_requests,
            "graceful_shutdown_timeout_s": model.graceful_shutdown_timeout_s,
            "health_check_period_s": 5.0,
        }
        if model.autoscaling_config is not None:
            options["autoscaling_config"] = model.autoscaling_config
        else:
            options["num_replicas"] = model.num_replicas or 1
        models.append(serve.deployment(ModelReplica).options(**options).bind(argv))
    ingress = serve.deployment(Ingress).options(
        name="ingress", num_replicas=spec.ingress.num_replicas, ray_actor_options=spec.ingress.ray_actor_options,
        max_ongoing_requests=spec.ingress.max_ongoing_requests, graceful_shutdown_timeout_s=60.0)
    return ingress.bind(models, flags_to_argv(spec.api), None if spec.web is None else flags_to_argv(spec.web))
