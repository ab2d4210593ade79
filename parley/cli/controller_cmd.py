"""`parley controller`: the registry that workers join and clients ask for a model's worker."""

from __future__ import annotations

import argparse
import logging

from parley.cli.secret_args import add_cluster_secret_argument, cluster_secret
from parley.serving.protocol import HEART_BEAT_EXPIRATION_S
from parley.serving.worker_registry import DispatchMethod

log = logging.getLogger("parley.controller")


def add_parser(sub) -> None:
    p = sub.add_parser("controller", help="run the controller", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=21001)
    p.add_argument("--dispatch-method", default=DispatchMethod.SHORTEST_QUEUE.value, choices=[d.value for d in DispatchMethod])
    p.add_argument("--heart-beat-expiration", type=float, default=HEART_BEAT_EXPIRATION_S,
                   help="seconds of silence after which a worker is dropped (default %(default)s)")
    add_cluster_secret_argument(p)
    p.set_defaults(run=run, default_log_level="INFO")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from parley.serving.cluster_auth import warn_if_open
    from parley.serving.controller import ControllerSettings, create_app

    secret = cluster_secret(args)
    warn_if_open(log, "controller", args.host, secret)
    app = create_app(ControllerSettings(dispatch_method=DispatchMethod(args.dispatch_method),
                                        heart_beat_expiration_s=args.heart_beat_expiration, cluster_secret=secret))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
    return 0
