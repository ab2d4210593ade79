"""`parley ray`: parley on a Ray cluster through Ray Serve.

`parley ray deploy CONFIG.yaml` checks a Serve config of parley applications (import_path parley.ray.app:build;
each model in `parley worker`'s flags, replicas, resources; the API's and web UI's flags) and sends it to the
cluster's dashboard, as `serve deploy` does, then shows the deployments coming up until they run. The file is
the whole truth: applications it leaves out are removed, and a changed one is updated in place (a rolling
update: replicas being replaced finish their replies). `parley ray status` shows the applications, deployments
and replicas; `parley ray delete` removes them. This command talks to the dashboard over HTTP: it needs no Ray.
"""

from __future__ import annotations

import argparse
import os
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

    deploy = with_address(ray_sub.add_parser("deploy", help="deploy (or update) parley from a Serve config file"))
    deploy.add_argument("config", help="a Serve config YAML whose applications have import_path parley.ray.app:build "
                                       "(see deploy/ray/parley.yaml)")
    deploy.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for every deployment to run (default %(default)s; 0: do not wait)")
    deploy.set_defaults(run=run_deploy)
    status = with_address(ray_sub.add_parser("status", help="the applications, deployments and replicas"))
    status.set_defaults(run=run_status)
    delete = with_address(ray_sub.add_parser("delete", help="remove every application deployed from a config"))
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


def run_deploy(args: argparse.Namespace) -> int:
    from parley.ray.config import check, read_config

    config = read_config(args.config)
    for application in config.applications:
        try:
            check(application.args)
        except ParleyError as exc:
            raise ParleyError(f"{args.config}: application {application.name}: {exc}") from None
    address = dashboard(args)
    body = config.model_dump(mode="json", exclude_none=True)
    try:
        response = httpx.put(address + APPS_PATH, json=body, timeout=60.0)
    except httpx.HTTPError as exc:
        raise ParleyError(f"cannot reach the Ray dashboard at {address} ({type(exc).__name__}); start the cluster "
                          "with `ray start --head`, or give --address") from None
    if response.status_code != 200:
        raise ParleyError(f"the Ray dashboard refused the config ({response.status_code}): {response.text[:1000]}")
    names = [a.name for a in config.applications]
    print(f"sent {args.config} to {address}: application(s) {', '.join(names)}", flush=True)
    if args.timeout <= 0:
        return 0
    return _wait(address, names, time.monotonic() + args.timeout, time.time())


def _wait(address: str, names: list[str], deadline: float, sent_at: float) -> int:
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
                                        for a in failed))
        if time.monotonic() > deadline:
            raise ParleyError("the deployments did not all run in time; `parley ray status` shows where they are")
        time.sleep(1.0)


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
    try:
        response = httpx.delete(address + APPS_PATH, timeout=120.0)
    except httpx.HTTPError as exc:
        raise ParleyError(f"cannot reach the Ray dashboard at {address} ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise ParleyError(f"the Ray dashboard answered {response.status_code}: {response.text[:300]}")
    print("deleted every application deployed from a config", flush=True)
    return 0
