"""`parley serve`: the whole stack on one machine — controller, a worker per model, the API, the web UI —
each in its own process, started in order, checked, and stopped together on Ctrl-C or SIGTERM.

A process that dies later is restarted with back-off while the others keep serving; a dead
worker is dropped from the controller at once, so requests for its model get a clean 503 until
it is back."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from collections.abc import Callable

import httpx
from rich.console import Console

from parley.cli.engine_args import add_engine_arguments, engine_flags_given
from parley.cli.secret_args import (
    API_KEYS_ENV,
    CLUSTER_SECRET_ENV,
    DB_URL_ENV,
    add_api_key_arguments,
    add_cluster_secret_argument,
    add_db_url_arguments,
    api_keys,
    cluster_secret,
    db_url,
)
from parley.cli.supervisor import Child, RestartPolicy, Supervisor, describe_exit
from parley.errors import ParleyError
from parley.models.bundled import BUNDLED_EMBEDDING_NAME
from parley.models.source import resolve_model_source
from parley.serving.cluster_auth import auth_headers, new_secret


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="run controller, workers and API together", description=__doc__)
    p.add_argument("--model-path", action="append", default=None,
                   help="a model to serve (repeat for several; default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1", help="where the API listens (controller and workers stay on 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="API port")
    p.add_argument("--controller-port", type=int, default=21001)
    p.add_argument("--worker-port", type=int, default=None, help="first worker's port (default: controller port + 1)")
    p.add_argument("--web-port", type=int, default=7860, help="web UI port (listens on --host, like the API)")
    p.add_argument("--no-web", action="store_true", help="do not start the web UI")
    p.add_argument("--embedding-model", default=BUNDLED_EMBEDDING_NAME, metavar="PATH",
                   help="the embedding model served beside the chat models, for assistants' knowledge (default: the "
                        "bundled all-MiniLM-L6-v2, engine sentence-transformers); 'none' serves none")
    add_db_url_arguments(p)
    p.add_argument("--auth", action="store_true",
                   help="run for a team: the web UI requires sign-in (accounts: `parley db create-user`, "
                        "`parley users`, or sign-up with --signup) and the API a key (made on the web UI's Account "
                        "page or with `parley keys create`, or one of --api-keys-file)")
    p.add_argument("--signup", choices=["closed", "open", "approval"], default=None,
                   help="who may make an account on the web UI (see `parley web --help`; default closed)")
    p.add_argument("--oidc-issuer", default=None, metavar="URL",
                   help="sign-in through this OpenID Connect provider too (see `parley web --help`)")
    p.add_argument("--oidc-client-id", default=None)
    p.add_argument("--oidc-client-secret-file", default=None, metavar="PATH",
                   help="file holding the OIDC client secret (default: $PARLEY_OIDC_CLIENT_SECRET)")
    p.add_argument("--oidc-name", default=None, help="the sign-in button's provider name")
    p.add_argument("--max-concurrent-replies", type=int, default=None,
                   help="replies the web UI streams at once (default 32; see `parley web --help`)")
    add_api_key_arguments(p)
    add_cluster_secret_argument(p)
    add_engine_arguments(p, only_given=True, model_flags=False)  # every engine's flags, passed on to the workers
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the stack to come up")
    p.add_argument("--max-restarts", type=int, default=5,
                   help="give up restarting a process after this many crashes in a row, each within a minute of its start")
    p.set_defaults(run=run, default_log_level="INFO")


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen there now. SO_REUSEADDR, as uvicorn sets it, so that
    connections of a stack stopped a moment ago (TIME_WAIT) do not count as in use."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class _Stop(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    sources = [resolve_model_source(p) for p in (args.model_path or [None])]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ParleyError(f"two models would be served under one name: {', '.join(names)}")
    if not args.auth and (args.signup not in (None, "closed") or args.oidc_issuer):
        raise ParleyError("--signup and --oidc-issuer need --auth (without it there are no accounts: everyone is "
                          "the one local user)")
    local = "127.0.0.1"
    worker_port = args.worker_port or args.controller_port + 1
    ports = {"controller": (local, args.controller_port), "api": (args.host, args.port)}
    if not args.no_web:
        ports["web UI"] = (args.host, args.web_port)
    embedding = None if args.embedding_model.lower() == "none" else resolve_model_source(args.embedding_model)
    if embedding is not None and embedding.name in names:
        raise ParleyError(f"the embedding model would be served under a chat model's name: {embedding.name}")
    for i in range(len(sources)):
        ports[f"worker {names[i]}"] = (local, worker_port + i)
    if embedding is not None:
        ports[f"worker {embedding.name}"] = (local, worker_port + len(sources))
    for what, (host, port) in ports.items():
        if not _port_free(host, port):
            raise ParleyError(f"port {port} ({what}) is in use; stop what uses it or choose another port")

    # Secrets reach the children in their environment, never in argv (which `ps` shows to every user). The
    # cluster's own secret is made afresh unless one is given (for workers started elsewhere to join).
    secret = cluster_secret(args) or new_secret()
    keys, database = api_keys(args), db_url(args)
    base = [sys.executable, "-m", "parley", "--log-level", args.log_level]
    cluster_env = {CLUSTER_SECRET_ENV: secret}
    controller_url = f"http://{local}:{args.controller_port}"
    controller = Child("controller", base + ["controller", "--host", local, "--port", str(args.controller_port)],
                       env=cluster_env)
    headers = auth_headers(secret)

    def models_served(timeout: float) -> list[str]:
        return httpx.post(controller_url + "/list_models", timeout=timeout, headers=headers).json()["models"]

    def drop_from_controller(child: Child, how: str) -> None:
        try:
            httpx.post(controller_url + "/report_worker_failure", timeout=2, headers=headers,
                       json={"worker_name": child.address, "reason": f"the process {how}"})
        except httpx.HTTPError:
            pass  # the controller is down too; it learns the worker list afresh when it is back

    def serves(name: str) -> Callable[[], bool]:
        return lambda: name in models_served(1)

    engine_flags = engine_flags_given(args)
    workers = [
        Child(f"worker {name}", base + [
            "worker", "--model-path", source.location, "--model-names", name, "--engine", args.engine,
            *engine_flags, "--host", local, "--port", str(worker_port + i), "--controller-address", controller_url,
        ], env=cluster_env, address=f"http://{local}:{worker_port + i}", on_death=drop_from_controller,
            ready=serves(name))
        for i, (name, source) in enumerate(zip(names, sources))
    ]
    if embedding is not None:
        port = worker_port + len(sources)
        workers.append(Child(f"worker {embedding.name}", base + [
            "worker", "--model-path", embedding.location, "--model-names", embedding.name,
            "--engine", "sentence-transformers", "--host", local, "--port", str(port),
            "--controller-address", controller_url,
        ], env=cluster_env, address=f"http://{local}:{port}", on_death=drop_from_controller,
            ready=serves(embedding.name)))
    served = names + ([embedding.name] if embedding is not None else [])
    api = Child("api", base + ["api", "--host", args.host, "--port", str(args.port),
                               "--controller-address", controller_url, *(["--auth"] if args.auth else [])],
                env=cluster_env | {API_KEYS_ENV: ",".join(keys)} | ({DB_URL_ENV: database} if database else {}))
    web = Child("web UI", base + ["web", "--host", args.host, "--port", str(args.web_port),
                                  "--controller-address", controller_url,
                                  "--embedding-model", embedding.name if embedding is not None else "none",
                                  *(["--auth"] if args.auth else []),
                                  *_web_team_flags(args),
                                  *(["--max-concurrent-replies", str(args.max_concurrent_replies)]
                                    if args.max_concurrent_replies else [])],
                env=cluster_env | ({DB_URL_ENV: database} if database else {}))
    children = [controller, *workers, api] + ([] if args.no_web else [web])

    def on_signal(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not break the orderly stop
            signal.signal(s, signal.SIG_IGN)
        raise _Stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        controller.start()
        _wait_for(console, "controller", controller,
                  lambda: httpx.get(controller_url + "/health", timeout=2).json()["status"] == "ok", args.startup_timeout)
        for w in workers:
            w.start()
        for w, name in zip(workers, served):
            _wait_for(console, f"worker for {name} (loading the model)", w,
                      lambda name=name: name in models_served(2),
                      args.startup_timeout)
        api.start()
        shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        api_url = f"http://{shown_host}:{args.port}"
        _wait_for(console, "API", api, lambda: httpx.get(api_url + "/health", timeout=2).json()["status"] == "ok",
                  args.startup_timeout)
        web_url = f"http://{shown_host}:{args.web_port}"
        if not args.no_web:
            web.start()
            _wait_for(console, "web UI", web, lambda: httpx.get(web_url + "/health", timeout=2).json()["status"] == "ok",
                      args.startup_timeout)
        console.print(f"[bold green]parley is serving[/] {', '.join(names)}")
        if not args.no_web:
            console.print(f"  web UI       {web_url}   (chat, arena, leaderboard)")
        console.print(f"  OpenAI API   {api_url}/v1   (try: parley chat --base-url {api_url}/v1 --model {names[0]})")
        console.print(f"  controller   {controller_url}")
        for w in workers:
            console.print(f"  {w.name:<12} {w.address}")
        console.print("  metrics      " + f"{api_url}/metrics")
        if args.auth:
            console.print("  sign-in is required; API keys: the web UI's Account page, or "
                          "`parley keys create --user NAME --name WHAT`")
        console.print("Press Ctrl-C to stop.")
        supervisor = Supervisor(children, RestartPolicy(max_fast_crashes=args.max_restarts),
                                say=lambda text: console.print(text, markup=False, highlight=False))
        while True:
            supervisor.check()
            time.sleep(0.2)
    except _Stop:
        console.print("stopping…")
        return 0
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        for child in reversed(children):
            child.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        console.print("stopped")


def _web_team_flags(args: argparse.Namespace) -> list[str]:
    """The sign-up and OpenID Connect flags, passed on to `parley web` (a secret goes by its file's path)."""
    flags = []
    for name in ("signup", "oidc_issuer", "oidc_client_id", "oidc_client_secret_file", "oidc_name"):
        value = getattr(args, name)
        if value is not None:
            flags += ["--" + name.replace("_", "-"), value]
    return flags


def _wait_for(console: Console, what: str, child: Child, ready, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with console.status(f"starting {what}…"):
        while True:
            if not child.alive():
                raise ParleyError(f"the {child.name} exited while starting ({describe_exit(child.proc.returncode)}); "
                                  "see its log above")
            try:
                if ready():
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise ParleyError(f"the {child.name} did not become ready within {timeout:.0f} s")
            time.sleep(0.3)
