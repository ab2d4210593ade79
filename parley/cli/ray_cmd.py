"""`parley ray`: parley on a Ray cluster through Ray Serve.

`parley ray deploy CONFIG.yaml` checks a parley config (the models, each in `parley worker`'s flags with its
replicas and resources; the API's and the web UI's flags: see deploy/ray/parley.yaml), turns it into a Serve config
(one application for the API and web UI, one per model) and sends that to the cluster's dashboard, as `serve
deploy` does; then it shows the applications coming up until they run. Deploying again with a changed file changes
only what changed: replicas and autoscaling in place, a changed model's replicas one by one (each finishes its
replies first), a new model as an application of its own. Models left out of the file are removed; other
applications on the cluster are kept. `parley ray render` prints the Serve config (for `serve deploy`, or KubeRay's
serveConfigV2); `parley ray status` shows the applications, deployments and replicas; `parley ray delete` removes
them. This command talks to the dashboard over HTTP: it needs no Ray here.
"""

from __future__ import annotations

import argparse
import os
import re
import time

import httpx
from pydantic import BaseModel, ConfigDict, Field

from parley.errors import ParleyError

DASHBOARD_ENV = "RAY_DASHBOARD_ADDRESS"
APPS_PATH = "/api/serve/applications/"
_DONE = {"RUNNING"}
_FAILED = {"DEPLOY_FAILED", "UNHEALTHY"}


def add_parser(sub) -> None:
    p = sub.add_parser("ray", help="run parley on a Ray cluster through Ray Serve (deploy, status, delete)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ray_sub = p.add_subparsers(dest="ray_command", metavar="ACTION", required=True)

    def with_address(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
        q.add_argument("--address", default=None,
                       help=f"the Ray dashboard's URL (default: ${DASHBOARD_ENV}, else http://127.0.0.1:8265)")
        return q

    deploy = with_address(ray_sub.add_parser("deploy", help="deploy (or update) parley from its config file"))
    deploy.add_argument("config", help="parley's Ray config (YAML: models, api, web; see deploy/ray/parley.yaml)")
    deploy.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for every deployment to run (default %(default)s; 0: do not wait)")
    deploy.set_defaults(run=run_deploy)
    render = ray_sub.add_parser("render", help="print the Serve config a parley config becomes (for `serve deploy` "
                                               "or KubeRay's serveConfigV2)")
    render.add_argument("config", help="parley's Ray config (YAML)")
    render.set_defaults(run=run_render)
    status = with_address(ray_sub.add_parser("status", help="the applications, deployments and replicas"))
    status.set_defaults(run=run_status)
    delete = with_address(ray_sub.add_parser("delete", help="remove a parley's applications from the cluster"))
    delete.add_argument("--name", default="parley", help="the config's name (default %(default)s)")
    delete.set_defaults(run=run_delete)


# -- what the dashboard answers (the parts read here) ------------------------------------------

class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Replica(_Loose):
    replica_id: str
    state: str
    pid: int | None = None
    node_ip: str | None = None
    log_file_path: str | None = None


class Deployment(_Loose):
    name: str
    status: str
    message: str = ""
    target_num_replicas: int | None = None
    replicas: list[Replica] = Field(default_factory=list)


class ApplicationStatus(_Loose):
    name: str
    status: str
    message: str = ""
    route_prefix: str | None = None
    deployments: dict[str, Deployment] = Field(default_factory=dict)
    deployed_app_config: dict | None = None  # as the Serve config gave it (None: deployed by code, not a config)


class ServeStatus(_Loose):
    applications: dict[str, ApplicationStatus] = Field(default_factory=dict)


def dashboard(args: argparse.Namespace) -> str:
    return (args.address or os.environ.get(DASHBOARD_ENV) or "http://127.0.0.1:8265").rstrip("/")


def fetch_status(address: str) -> ServeStatus:
    try:
        response = httpx.get(address + APPS_PATH, timeout=30.0)
    except httpx.HTTPError as exc:
        raise ParleyError(f"cannot reach the Ray dashboard at {address} ({type(exc).__name__}); start the cluster "
                          "with `ray start --head` (its dashboard listens on 8265), or give --address") from None
    if response.status_code != 200:
        raise ParleyError(f"the Ray dashboard at {address} answered {response.status_code}: {response.text[:300]}")
    return ServeStatus.model_validate(response.json())


def describe(status: ServeStatus) -> list[str]:
    lines = []
    for app in status.applications.values():
        lines.append(f"application {app.name} ({app.route_prefix or 'no route'}): {app.status}"
                     + (f" — {app.message.strip()}" if app.message.strip() and app.status != "RUNNING" else ""))
        for dep in app.deployments.values():
            states: dict[str, int] = {}
            for r in dep.replicas:
                states[r.state] = states.get(r.state, 0) + 1
            counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "no replicas"
            lines.append(f"  {dep.name}: {dep.status}, {counts} (target {dep.target_num_replicas})"
                         + (f" — {dep.message.strip()}" if dep.message.strip() and dep.status != "HEALTHY" else ""))
    return lines or ["no applications"]


def ours(name: str, config_name: str) -> bool:
    return name == config_name or name.startswith(f"{config_name}-model-")


def run_render(args: argparse.Namespace) -> int:
    import yaml

    from parley.ray.config import check, read_config, render

    config = read_config(args.config)
    check(config)
    print(f"# rendered by `parley ray render {args.config}`: a Serve config of parley's applications")
    print(yaml.safe_dump(render(config), sort_keys=False), end="")
    return 0


def run_deploy(args: argparse.Namespace) -> int:
    from parley.ray.config import check, read_config, render

    config = read_config(args.config)
    try:
        check(config)
    except ParleyError as exc:
        raise ParleyError(f"{args.config}: {exc}") from None
    address = dashboard(args)
    body = render(config)
    names = [a["name"] for a in body["applications"]]
    others = [a.deployed_app_config for a in fetch_status(address).applications.values()
              if not ours(a.name, config.name) and a.deployed_app_config]
    _put(address, {**body, "applications": body["applications"] + others})
    print(f"sent {args.config} to {address}: application(s) {', '.join(names)}"
          + (f" (kept the cluster's other applications: {', '.join(a['name'] for a in others)})" if others else ""),
          flush=True)
    if args.timeout <= 0:
        return 0
    return _wait(address, names, time.monotonic() + args.timeout)


def _put(address: str, body: dict) -> None:
    try:
        response = httpx.put(address + APPS_PATH, json=body, timeout=60.0)
    except httpx.HTTPError as exc:
        raise ParleyError(f"cannot reach the Ray dashboard at {address} ({type(exc).__name__}); start the cluster "
                          "with `ray start --head`, or give --address") from None
    if response.status_code != 200:
        raise ParleyError(f"the Ray dashboard refused the config ({response.status_code}): {response.text[:1000]}")


def _wait(address: str, names: list[str], deadline: float) -> int:
    """Print each change of the applications' state until all run, one fails, or the deadline passes."""
    shown: list[str] = []
    while True:
        status = fetch_status(address)
        apps = [status.applications.get(n) for n in names]
        lines = describe(ServeStatus(applications={a.name: a for a in apps if a is not None}))
        if lines != shown:
            print(f"[{time.strftime('%H:%M:%S')}]", *lines, sep="\n", flush=True)
            shown = lines
        if all(a is not None and a.status in _DONE for a in apps):
            print("deployed: every application is running", flush=True)
            return 0
        failed = [a for a in apps if a is not None and a.status in _FAILED]
        if failed:
            raise ParleyError("; ".join(f"application {a.name} is {a.status}: {a.message.strip()[-2000:]}"
                                        + "".join(f"\n  {d.name}: {_reason(d.message)}" for d in a.deployments.values()
                                                  if d.status in _FAILED) for a in failed))
        if time.monotonic() > deadline:
            raise ParleyError("the deployments did not all run in time; `parley ray status` shows where they are")
        time.sleep(1.0)


def _reason(message: str) -> str:
    """What a failed deployment's message says went wrong: the exception's own line, past Serve's traceback."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b.*:", line)]
    return (errors[-1] if errors else lines[-1] if lines else "no reason given")[:1000]


def run_status(args: argparse.Namespace) -> int:
    status = fetch_status(dashboard(args))
    print("\n".join(describe(status)))
    for app in status.applications.values():
        for dep in app.deployments.values():
            for r in dep.replicas:
                print(f"    {dep.name} {r.replica_id}: {r.state.lower()}, pid {r.pid} on {r.node_ip}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    address = dashboard(args)
    status = fetch_status(address)
    mine = [name for name in status.applications if ours(name, args.name)]
    if not mine:
        print(f"no applications of {args.name} on the cluster", flush=True)
        return 0
    others = [a.deployed_app_config for a in status.applications.values()
              if not ours(a.name, args.name) and a.deployed_app_config]
    try:
        if others:
            _put(address, {"applications": others})
        else:
            response = httpx.delete(address + APPS_PATH, timeout=120.0)
            if response.status_code != 200:
                raise ParleyError(f"the Ray dashboard answered {response.status_code}: {response.text[:300]}")
    except httpx.HTTPError as exc:
        raise ParleyError(f"cannot reach the Ray dashboard at {address} ({type(exc).__name__})") from None
    print(f"deleting {', '.join(mine)}", flush=True)
    return 0
