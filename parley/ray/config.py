"""parley on Ray Serve, as a file: the models (each in `parley worker`'s flags, without the leading `--`, with Serve's
replicas, autoscaling and resources beside them), the API's flags (`parley api`'s) and the web UI's (`parley web`'s).
`parley ray deploy` reads it, checks every flag as its command would, and sends Serve the config it becomes
(`render`: what `parley ray render` prints, for `serve deploy` and KubeRay's serveConfigV2).

This module does not import Ray, so a config can be checked where Ray is not installed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from parley.errors import ParleyError
from parley.models.bundled import BUNDLED_MODEL_NAME

FlagValue = str | int | float | bool | list[str | int | float] | None
_FLAG = re.compile(r"^[a-z][a-z0-9-]*$")


def flags_to_argv(flags: dict[str, FlagValue]) -> list[str]:
    """`{"model-path": "m.gguf", "auth": True, "api-keys-file": None}` as a command line: a true switch is the flag
    alone, a false or null one is left out, a list repeats the flag."""
    argv: list[str] = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(f"--{name}")
            continue
        for one in value if isinstance(value, list) else [value]:
            argv += [f"--{name}", str(one)]
    return argv


def _check_flags(flags: dict[str, FlagValue], what: str) -> dict[str, FlagValue]:
    for name in flags:
        if name.startswith("-") or not _FLAG.match(name):
            raise ValueError(f"{what} flag {name!r}: write the flag's name without the leading '--', e.g. 'model-path'")
    return flags


_WORKER_MANAGED = ("host", "port", "worker-address", "controller-address", "no-register", "heart-beat-interval")
_SERVER_MANAGED = ("host", "port", "controller-address")


def _worker_flags(value: dict[str, FlagValue]) -> dict[str, FlagValue]:
    _check_flags(value, "worker")
    for managed in _WORKER_MANAGED:
        if managed in value:
            raise ValueError(f"worker flag {managed!r} has no meaning under Ray Serve (Serve places and reaches "
                             "the replicas); leave it out")
    return value


def _server_flags(value: dict[str, FlagValue] | None) -> dict[str, FlagValue] | None:
    if value is None:
        return None
    _check_flags(value, "api/web")
    for managed in _SERVER_MANAGED:
        if managed in value:
            raise ValueError(f"flag {managed!r} has no meaning under Ray Serve (its HTTP proxy listens; set "
                             "http_options); leave it out")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """One model: a Serve deployment whose replicas each run a parley worker's engine."""

    worker: dict[str, FlagValue] = Field(description="`parley worker`'s flags, e.g. {model-path: org/model.gguf, engine: llamacpp}")
    num_replicas: int | None = Field(None, ge=1, description="fixed replica count (default 1, or autoscaling_config)")
    autoscaling_config: dict[str, Any] | None = Field(
        None, description="Serve's autoscaling: min_replicas, max_replicas, target_ongoing_requests, ...")
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 1}, description="each replica's resources: num_cpus, num_gpus, memory, ...")
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="requests one replica takes at once (default: the worker's --limit-worker-concurrency); "
                                "more wait at the router, which sends each to the replica with the shortest queue")
    max_queued_requests: int = Field(-1, ge=-1, description="requests that may wait at the router (-1: no limit); "
                                                            "beyond it a request is refused with 429")
    graceful_shutdown_timeout_s: float = Field(
        60.0, gt=0, description="how long a replica being removed (scale-down, redeploy) may finish its replies")

    _flags = field_validator("worker")(_worker_flags)

    @model_validator(mode="after")
    def _one_scaling(self) -> ModelSpec:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("give num_replicas or autoscaling_config, not both")
        return self


class IngressSpec(_Strict):
    """The ingress: the OpenAI API (and the web UI) in one deployment behind Serve's HTTP proxy."""

    num_replicas: int = Field(1, ge=1, description="more than one needs a shared database (PostgreSQL) and a "
                                                   "cluster secret (it signs the web UI's sessions)")
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})
    max_ongoing_requests: int = Field(1000, ge=1, description="HTTP requests one ingress replica takes at once")


class HTTPOptions(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)


class ParleyConfig(_Strict):
    """What `parley ray deploy` and `parley ray render` read: the models (each in `parley worker`'s flags, with
    Serve's replicas and resources), the API's and the web UI's flags."""

    name: str = Field("parley", pattern=r"^[a-z][a-z0-9-]{0,40}$",
                      description="the Serve applications' names start with it (several parleys may share a cluster)")
    http_options: HTTPOptions = Field(default_factory=HTTPOptions)
    models: list[ModelSpec] = Field(min_length=1)
    api: dict[str, FlagValue] = Field(default_factory=dict, description="`parley api`'s flags, e.g. {auth: true}")
    web: dict[str, FlagValue] | None = Field(
        default_factory=dict, description="`parley web`'s flags; null: no web UI (only the API)")
    ingress: IngressSpec = Field(default_factory=IngressSpec)

    _flags = field_validator("api", "web")(_server_flags)


# -- the Serve config it becomes: one application for the ingress, one for each model ------------------------
#
# A model is an application of its own, so that adding, changing or removing one touches no other (a change of a
# Serve application's args restarts every deployment in it). Its replica count, autoscaling and queue limits sit in
# the application's `deployments` section, where Serve changes them in place, without restarting a replica. The
# ingress finds the model applications by their names' prefix (`<name>-model-`), so it is not restarted either.

INGRESS_IMPORT = "parley.ray.app:ingress"
MODEL_IMPORT = "parley.ray.app:model"
MODEL_DEPLOYMENT = "model"
INGRESS_DEPLOYMENT = "ingress"


class ModelArgs(_Strict):
    """A model application's args: the worker's flags."""

    worker: dict[str, FlagValue]

    _flags = field_validator("worker")(_worker_flags)


class IngressArgs(_Strict):
    """The ingress application's args."""

    models_prefix: str = Field(min_length=1, description="the model applications' names start with it")
    api: dict[str, FlagValue] = Field(default_factory=dict)
    web: dict[str, FlagValue] | None = Field(default_factory=dict)

    _flags = field_validator("api", "web")(_server_flags)


class ServeApplication(BaseModel):
    model_config = ConfigDict(extra="allow")  # Serve's own keys (runtime_env, logging_config, ...) pass through
    name: str
    import_path: str
    route_prefix: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    deployments: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ours(self) -> ServeApplication:
        if self.import_path == INGRESS_IMPORT:
            IngressArgs.model_validate(self.args)
        elif self.import_path == MODEL_IMPORT:
            ModelArgs.model_validate(self.args)
        else:
            raise ValueError(f"import_path must be {INGRESS_IMPORT!r} or {MODEL_IMPORT!r}, not {self.import_path!r}")
        return self


class ServeConfig(BaseModel):
    """A Serve config (`serve deploy`'s format, KubeRay's serveConfigV2) of parley's applications, as
    `parley ray render` writes it. Serve's other top-level keys pass through."""

    model_config = ConfigDict(extra="allow")
    http_options: HTTPOptions = Field(default_factory=HTTPOptions)
    applications: list[ServeApplication] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> ServeConfig:
        names = [a.name for a in self.applications]
        if len(set(names)) != len(names):
            raise ValueError(f"application names repeat: {names}")
        return self


def deployment_names(models: list[ModelSpec]) -> list[str]:
    """A stable name for each model's deployment: its first --model-names (or --model-name), else its path's last
    part, else its engine; repeats get -2, -3."""
    names: list[str] = []
    for spec in models:
        flags = spec.worker
        hint = str(flags.get("model-names") or flags.get("model-name") or "").split(",")[0].strip()
        if not hint:
            path = str(flags.get("model-path") or "").rstrip("/")
            hint = path.split("/")[-1] if path else ("" if flags.get("engine") == "openai" else BUNDLED_MODEL_NAME)
        hint = hint or str(flags.get("engine") or "model")
        base = "model-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", hint).strip("-") or "model")
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def check(config: ParleyConfig) -> None:
    """Every flag read as its command's parser reads it (a ParleyError naming a bad one), without loading a model,
    opening a database or reading a secret's file (those are the cluster's: what fails there, `parley ray deploy`
    shows from the application's status)."""
    from parley.cli.engine_args import AUTO
    from parley.cli.worker_cmd import parse_worker_flags
    from parley.engines.registry import EngineRegistry
    from parley.ray.server_flags import parse_server_flags

    engines = EngineRegistry.from_entry_points().names()
    for spec in config.models:
        worker = parse_worker_flags(flags_to_argv(spec.worker))
        if worker.engine not in (AUTO, *engines):
            raise ParleyError(f"worker flag engine: no engine {worker.engine!r} (installed: {', '.join(engines)})")
    parse_server_flags("api", flags_to_argv(config.api))
    if config.web is not None:
        parse_server_flags("web", flags_to_argv(config.web))


def render(config: ParleyConfig) -> dict[str, Any]:
    """The Serve config (`serve deploy`'s format) of a parley config: the ingress application at "/", then one
    application per model (no HTTP route of its own), with Serve's settings in each `deployments` section."""
    from parley.cli.worker_cmd import parse_worker_flags

    applications: list[dict[str, Any]] = [{
        "name": config.name, "route_prefix": "/", "import_path": INGRESS_IMPORT,
        "args": {"models_prefix": f"{config.name}-model-", "api": config.api, "web": config.web},
        "deployments": [{"name": INGRESS_DEPLOYMENT, "num_replicas": config.ingress.num_replicas,
                         "ray_actor_options": config.ingress.ray_actor_options,
                         "max_ongoing_requests": config.ingress.max_ongoing_requests,
                         "graceful_shutdown_timeout_s": 60.0}]}]
    for name, spec in zip(deployment_names(config.models), config.models):
        concurrency = parse_worker_flags(flags_to_argv(spec.worker)).limit_worker_concurrency
        deployment: dict[str, Any] = {
            "name": MODEL_DEPLOYMENT, "ray_actor_options": spec.ray_actor_options,
            "max_ongoing_requests": spec.max_ongoing_requests or concurrency,
            "max_queued_requests": spec.max_queued_requests,
            "graceful_shutdown_timeout_s": spec.graceful_shutdown_timeout_s, "health_check_period_s": 5.0}
        if spec.autoscaling_config is not None:
            deployment["autoscaling_config"] = spec.autoscaling_config
        else:
            deployment["num_replicas"] = spec.num_replicas or 1
        applications.append({"name": f"{config.name}-{name}", "route_prefix": None, "import_path": MODEL_IMPORT,
                             "args": {"worker": spec.worker}, "deployments": [deployment]})
    return {"http_options": config.http_options.model_dump(), "applications": applications}


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())


def _yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ParleyError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ParleyError(f"{path} is not YAML: {exc}") from None


def read_config(path: str | Path) -> ParleyConfig:
    """The parley config in `path`, checked; a ParleyError naming the file and the field otherwise."""
    return parse_config(_yaml(path), str(path))


def parse_config(raw: Any, where: str = "the config") -> ParleyConfig:
    if isinstance(raw, dict) and "applications" in raw:
        raise ParleyError(f"{where} is a Serve config (it has `applications`): give `parley ray deploy` parley's own "
                          "config (models, api, web; see deploy/ray/parley.yaml), or give this one to `serve deploy`")
    try:
        return ParleyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ParleyError(f"{where}: {_problems(exc)}") from None


def parse_serve_config(raw: Any, where: str = "the Serve config") -> ServeConfig:
    """A Serve config of parley's applications (what `render` writes), checked."""
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ParleyError(f"{where}: {_problems(exc)}") from None
