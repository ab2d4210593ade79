"""parley's Ray Serve applications, as a Serve config names them (`parley ray render` writes it):

- `import_path: parley.ray.app:model`, one application per model: one deployment, `ModelReplica` (a parley worker's
  engine per replica), its args the worker's flags; replicas, autoscaling and resources in the config's
  `deployments` section, which Serve changes in place.
- `import_path: parley.ray.app:ingress`: the API and the web UI (`Ingress`), which find the model applications by
  their names' prefix, so a model added or removed restarts nothing else.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from parley.ray.config import (
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    IngressArgs,
    ModelArgs,
    flags_to_argv,
)
from parley.ray.ingress import Ingress
from parley.ray.replica import ModelReplica


def model(args: dict[str, Any]) -> Application:
    spec = ModelArgs.model_validate(args)
    return serve.deployment(ModelReplica, name=MODEL_DEPLOYMENT).bind(flags_to_argv(spec.worker))


def ingress(args: dict[str, Any]) -> Application:
    spec = IngressArgs.model_validate(args)
    web = None if spec.web is None else flags_to_argv(spec.web)
    return serve.deployment(Ingress, name=INGRESS_DEPLOYMENT).bind(spec.models_prefix, flags_to_argv(spec.api), web)
