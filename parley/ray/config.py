"""What a parley application on Ray Serve is made of: the `args` of a Serve config's application whose import_path
is `parley.ray.app:build` (the file `parley ray deploy` and `serve deploy` take, and KubeRay's serveConfigV2).

Each model is given in the terms of `parley worker`'s flags (without the leading `--`), the API in `parley api`'s and
the web UI in `parley web`'s; Serve's own settings (replicas, autoscaling, actor resources) sit beside them. This
module reads and checks the file; it does not import Ray, so a config can be checked where Ray is not installed.
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

IMPORT_PATH = "parley.ray.app:build"
FlagValue = str | int | float | bool | list[str | int | float] | None
_FLAG = re.compile(r"^[a-z][a-z0-9-]*$")


def flags_to_argv(flags: dict[str, FlagValue]) -> list[str]:
    """`{"model-path": "bundled", "auth": True, "api-keys-file": None}` as a command line: a true switch is the flag
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """One model: a Serve deployment whose replicas each run a parley worker's engine."""

    worker: dict[str, FlagValue] = Field(description="`parley worker`'s flags, e.g. {model-path: bundled, engine: llamacpp}")
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

    @field_validator("worker")
    @classmethod
    def _worker_flags(cls, value: dict[str, FlagValue]) -> dict[str, FlagValue]:
        _check_flags(value, "worker")
        for managed in ("host", "port", "worker-address", "controller-address", "no-register", "heart-beat-interval"):
            if managed in value:
                raise ValueError(f"worker flag {managed!r} has no meaning under Ray Serve (Serve places and reaches "
                                 "the replicas); leave it out")
        return value

    @model_validator(mode="after")
    def _one_scaling(self) -> ModelSpec:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("give num_replicas or autoscaling_config, not both")
        return self


class IngressSpec(_Strict):
    """The ingress: the OpenAI API (and the web UI) in one deployment behind Serve's HTTP proxy."""

    num_replicas: int = Field(1, ge=1, description="more than one needs a shared database (PostgreSQL)")
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})
    max_ongoing_requests: int = Field(1000, ge=1, description="HTTP requests one ingress replica takes at once")


class AppArgs(_Strict):
    """The `args` of parley's Serve application."""

    models: list[ModelSpec] = Field(min_length=1)
    api: dict[str, FlagValue] = Field(default_factory=dict, description="`parley api`'s flags, e.g. {auth: true}")
    web: dict[str, FlagValue] | None = Field(
        default_factory=dict, description="`parley web`'s flags; null: no web UI (only the API)")
    ingress: IngressSpec = Field(default_factory=IngressSpec)

    @field_validator("api", "web")
    @classmethod
    def _server_flags(cls, value: dict[str, FlagValue] | None) -> dict[str, FlagValue] | None:
        if value is None:
            return None
        _check_flags(value, "api/web")
        for managed in ("host", "port", "controller-address"):
            if managed in value:
                raise ValueError(f"flag {managed!r} has no meaning under Ray Serve (its HTTP proxy listens; set "
                                 "http_options in the Serve config); leave it out")
        return value


class Application(_Strict):
    name: str = "parley"
    route_prefix: str = "/"
    import_path: str = IMPORT_PATH
    args: AppArgs
    runtime_env: dict[str, Any] = Field(default_factory=dict)

    @field_validator("import_path")
    @classmethod
    def _ours(cls, value: str) -> str:
        if value != IMPORT_PATH:
            raise ValueError(f"import_path must be {IMPORT_PATH!r} (parley's application), not {value!r}")
        return value


class HTTPOptions(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)


class ServeConfig(BaseModel):
    """A Serve config file (`serve deploy`'s format) holding parley applications. Serve's other top-level keys
    (proxy_location, grpc_options, logging_config) are passed over, as `serve deploy` reads them."""

    model_config = ConfigDict(extra="allow")
    http_options: HTTPOptions = Field(default_factory=HTTPOptions)
    applications: list[Application] = Field(min_length=1)

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


def check(args: AppArgs) -> None:
    """Every flag of the config read as its command reads it (a ParleyError naming a bad one), without loading a
    model or opening a database."""
    from parley.cli.worker_cmd import parse_worker_flags
    from parley.ray.server_flags import api_settings_of, web_settings_of

    for spec in args.models:
        parse_worker_flags(flags_to_argv(spec.worker))
    api_settings_of(flags_to_argv(args.api))
    if args.web is not None:
        web_settings_of(flags_to_argv(args.web))


def read_config(path: str | Path) -> ServeConfig:
    """The Serve config in `path`, checked; a ParleyError naming the file and the field otherwise."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ParleyError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ParleyError(f"{path} is not YAML: {exc}") from None
    return parse_config(raw, str(path))


def parse_config(raw: Any, where: str = "the config") -> ServeConfig:
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ParleyError(f"{where}: {problems}") from None
