"""`parley api`: the OpenAI-compatible REST API in front of the controller and its workers.

With --auth every request needs an API key: a user's key (made in the web UI or with `parley keys create`),
checked against the database with the key's and its user's limits, or one of --api-keys. Every request to a model
is recorded as usage in the database."""

from __future__ import annotations

import argparse

from parley.cli.secret_args import (
    add_api_key_arguments,
    add_cluster_secret_argument,
    add_db_url_arguments,
    api_keys,
    cluster_secret,
    db_url,
)
from parley.errors import ParleyError
from parley.serving.request_limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_SEND_TIMEOUT_S


def add_parser(sub) -> None:
    p = sub.add_parser("api", help="run the OpenAI-compatible API server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="instead of a controller: join this Ray cluster (its GCS address, e.g. 10.0.0.5:6379, or "
                        "'auto') and serve the models `parley ray deploy` put there, through Serve's deployment "
                        "handles (needs parley[ray])")
    p.add_argument("--ray-name", default="parley", help="with --ray-address: the parley config's name")
    add_api_key_arguments(p)
    p.add_argument("--auth", action="store_true",
                   help="every request needs an API key: a user's key (made in the web UI or with `parley keys "
                        "create`) or one of --api-keys")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="a request body beyond this is refused with 413 (default %(default)s: 4 MiB)")
    p.add_argument("--stream-send-timeout", type=float, default=DEFAULT_SEND_TIMEOUT_S,
                   help="seconds a client may read nothing of a streamed reply before it is disconnected and its "
                        "generation stopped (default %(default)s)")
    p.add_argument("--allowed-origins", default=None, help="comma-separated origins allowed by CORS (e.g. http://localhost:3000 or *)")
    p.add_argument("--worker-timeout", type=float, default=120.0,
                   help="seconds of silence from a worker mid-reply before the reply fails (default %(default)s)")
    add_cluster_secret_argument(p)
    add_db_url_arguments(p)
    p.add_argument("--no-assistants", action="store_true",
                   help="serve no assistants and open no database: only the models the controller lists, and no "
                        "users' keys, limits or usage records")
    p.set_defaults(run=run, default_log_level="INFO")


def split_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def api_settings(args: argparse.Namespace):
    """The API's settings from its flags; a ParleyError for a bad combination."""
    from parley.serving.api import APISettings
    from parley.store.database import default_url

    keys = api_keys(args)
    if args.auth and args.no_assistants and not keys:
        raise ParleyError("--auth with --no-assistants accepts no key at all: users' keys live in the database "
                          "that --no-assistants turns off; drop --no-assistants, or give --api-keys-file")
    return APISettings(controller_address=args.controller_address, api_keys=keys, require_keys=args.auth,
                       allowed_origins=split_list(args.allowed_origins), worker_timeout_s=args.worker_timeout,
                       cluster_secret=cluster_secret(args), max_body_bytes=args.max_request_bytes,
                       send_timeout_s=args.stream_send_timeout,
                       db_url=None if args.no_assistants else (db_url(args) or default_url()))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from parley.serving.api import create_app

    settings = api_settings(args)
    cluster = None
    if args.ray_address:
        from parley.ray.driver import serve_cluster

        cluster = serve_cluster(args.ray_address, args.ray_name, settings.worker_timeout_s)
    app = create_app(settings, cluster=cluster)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
    return 0
