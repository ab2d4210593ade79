"""`parley worker`: serve one model (under one or more names) and register with the controller."""

from __future__ import annotations

import argparse
import logging
import socket
from typing import TYPE_CHECKING

from parley.cli.engine_args import add_engine_arguments, load_engine
from parley.cli.secret_args import add_cluster_secret_argument, cluster_secret
from parley.errors import ParleyError
from parley.serving.protocol import HEART_BEAT_INTERVAL_S

if TYPE_CHECKING:
    from parley.engines.base import Engine
    from parley.serving.worker import WorkerSettings

log = logging.getLogger("parley.worker")


def add_parser(sub) -> None:
    p = sub.add_parser("worker", help="run a model worker", description=__doc__)
    add_all_arguments(p)
    p.set_defaults(run=run, default_log_level="INFO")


def add_all_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument("--model-names", default=None,
                   help="comma-separated names to serve the model under (default: --model-name or the path's name)")
    p.add_argument("--conv-template", default=None, help="named chat template instead of the model's own")
    add_worker_arguments(p)


def add_worker_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("worker")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=21002)
    g.add_argument("--worker-address", default=None,
                   help="the URL the controller and API reach this worker at (default: http://HOST:PORT)")
    g.add_argument("--controller-address", default="http://127.0.0.1:21001")
    g.add_argument("--no-register", action="store_true", help="do not register with a controller")
    g.add_argument("--limit-worker-concurrency", type=int, default=64, help="requests generating at once")
    g.add_argument("--max-queue-length", type=int, default=256,
                   help="requests waiting beyond the concurrency limit; more are refused with 429")
    g.add_argument("--stream-interval", type=int, default=1, help="engine steps per streamed chunk")
    g.add_argument("--heart-beat-interval", type=float, default=HEART_BEAT_INTERVAL_S,
                   help="seconds between heartbeats to the controller (default %(default)s)")
    g.add_argument("--speed", type=float, default=1.0, help="relative speed, for lottery dispatch")
    g.add_argument("--max-request-bytes", type=int, default=None,
                   help="a request body beyond this is refused with 413 (default: 16 MiB)")
    g.add_argument("--stream-send-timeout", type=float, default=None,
                   help="seconds a reader may take nothing of a stream before it is disconnected and its generation "
                        "stopped (default 60)")
    add_cluster_secret_argument(g)


def worker_address(args: argparse.Namespace) -> str:
    if args.worker_address:
        return args.worker_address.rstrip("/")
    host = args.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
        log.warning("listening on all interfaces; registering as http://%s:%d (set --worker-address if the "
                    "controller reaches this machine by another name)", host, args.port)
    return f"http://{host}:{args.port}"


def parse_worker_flags(argv: list[str]) -> argparse.Namespace:
    """`parley worker`'s flags (as on its command line) read as the command reads them; a bad one is a ParleyError
    naming it (Ray Serve's replicas are configured in these terms)."""
    parser = argparse.ArgumentParser(prog="parley worker", exit_on_error=False, add_help=False, allow_abbrev=False)
    add_all_arguments(parser)
    try:
        args, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ParleyError(f"bad worker flags {' '.join(argv)}: {exc}") from None
    if unknown:
        raise ParleyError(f"unknown worker flags: {' '.join(unknown)} (see `parley worker --help`)")
    return args


def load_worker(args: argparse.Namespace, secret: str | None, register: bool = True) -> tuple[Engine, WorkerSettings]:
    """The engine the flags name, loaded, and the worker's settings."""
    from parley.serving.worker import WorkerSettings

    names = [n.strip() for n in (args.model_names or "").split(",") if n.strip()]
    if names and not args.model_name:
        args.model_name = names[0]
    engine = load_engine(args)
    names = names or list(getattr(engine, "upstreams", {})) or [engine.model_info.name]
    try:
        settings = WorkerSettings(
            model_names=names, worker_address=worker_address(args), controller_address=args.controller_address,
            register_with_controller=register and not args.no_register,
            limit_worker_concurrency=args.limit_worker_concurrency,
            max_queue_length=args.max_queue_length, stream_interval=args.stream_interval,
            conv_template=args.conv_template, heart_beat_interval_s=args.heart_beat_interval, speed=args.speed,
            cluster_secret=secret,
            **({"max_body_bytes": args.max_request_bytes} if args.max_request_bytes else {}),
            **({"send_timeout_s": args.stream_send_timeout} if args.stream_send_timeout else {}),
        )
    except ValueError as exc:
        raise ParleyError(f"bad worker settings: {exc}") from None
    return engine, settings


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from parley.serving.cluster_auth import warn_if_open
    from parley.serving.worker import create_app

    secret = cluster_secret(args)  # before the model loads: a bad secret file fails in a second
    warn_if_open(log, "worker", args.host, secret)
    engine, settings = load_worker(args, secret)
    try:
        app = create_app(engine, settings)
    except (ValueError, ParleyError) as exc:
        raise ParleyError(f"bad worker settings: {exc}") from None
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
    return 0
