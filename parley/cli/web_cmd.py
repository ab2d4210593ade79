"""`parley web`: the web UI — chat, Chatbot Arena, leaderboard and history — for the models a controller lists."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from parley.cli.secret_args import (
    add_cluster_secret_argument,
    add_db_url_arguments,
    cluster_secret,
    db_url,
)
from parley.errors import ParleyError
from parley.secret_files import read_secret

log = logging.getLogger("parley.web")
OIDC_SECRET_ENV = "PARLEY_OIDC_CLIENT_SECRET"


def add_parser(sub) -> None:
    p = sub.add_parser("web", help="the web UI (chat, arena, leaderboard, history)", description=__doc__)
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    add_db_url_arguments(p)
    p.add_argument("--auth", action="store_true",
                   help="require login (accounts: `parley db create-user`); without it everyone is the local user")
    p.add_argument("--signup", choices=("closed", "open", "approval"), default="closed",
                   help="with --auth, who may make an account on the sign-in page: nobody, admins make them "
                        "(closed, the default); anyone (open); anyone, active once an admin approves it (approval). "
                        "The same holds for a first sign-in through OpenID Connect")
    p.add_argument("--session-hours", type=float, default=14 * 24,
                   help="with --auth, how long a sign-in lasts (default: 336, 14 days)")
    p.add_argument("--oidc-issuer", default=None, metavar="URL",
                   help="with --auth, sign-in through this OpenID Connect provider too (its discovery document is "
                        "URL/.well-known/openid-configuration; register URL-of-this-server/api/oidc/callback as "
                        "the client's redirect URI there)")
    p.add_argument("--oidc-client-id", default=None, help="parley's client id at the OpenID Connect provider")
    p.add_argument("--oidc-client-secret-file", default=None, metavar="PATH",
                   help=f"file holding the client's secret (default: ${OIDC_SECRET_ENV})")
    p.add_argument("--oidc-name", default="single sign-on",
                   help='the provider\'s name on the sign-in button, e.g. "Keycloak" (default: %(default)s)')
    p.add_argument("--battle-weights", default=None,
                   help="MODEL=WEIGHT,... for drawing battle pairs (default: every model weight 1; 0 leaves one out)")
    p.add_argument("--model-info", type=Path, default=None,
                   help='JSON {"model name prefix": {"description": ..., "link": ...}} shown under the model picker')
    p.add_argument("--moderation", default=None, help="module:function called with each user message; it returns "
                                                      "None to allow or a message to refuse (default: none)")
    p.add_argument("--max-input-chars", type=int, default=8000)
    p.add_argument("--max-turns", type=int, default=20)
    p.add_argument("--max-concurrent-replies", type=int, default=32,
                   help="replies streamed at once (each side of a battle is one; default 32, a worker's batch)")
    p.add_argument("--max-waiting-replies", type=int, default=64,
                   help="replies that may wait for a turn; beyond that users are told to try again (default 64)")
    p.add_argument("--leaderboard-file", type=Path, default=None,
                   help="ratings JSON from `parley eval ratings` (default: ~/.local/share/parley/arena_ratings/"
                        "leaderboard.json; Recompute writes it from the stored votes)")
    p.add_argument("--leaderboard-interval", type=float, default=0.0,
                   help="recompute the leaderboard from stored votes every N seconds, in one background task of this "
                        "process (default: 0, on demand: an admin's Recompute, at most once in 30 s)")
    p.add_argument("--mt-bench-judgments", type=Path, default=None,
                   help="MT-bench single judgments shown beside the ratings (default: ~/.local/share/parley/"
                        "mt_bench/model_judgment/gpt-4_single.jsonl)")
    p.add_argument("--embedding-model", default="all-minilm-l6-v2",
                   help="the served model that embeds new knowledge collections (default %(default)s, which "
                        "`parley serve` serves); 'none': no knowledge uploads")
    add_cluster_secret_argument(p)
    p.set_defaults(run=run, default_log_level="INFO")


def oidc_settings(args: argparse.Namespace):
    """The OpenID Connect settings the flags give (None without --oidc-issuer)."""
    from parley.web.services import OIDCSettings

    if not args.oidc_issuer:
        if args.oidc_client_id or args.oidc_client_secret_file:
            raise ParleyError("--oidc-client-id and --oidc-client-secret-file need --oidc-issuer")
        return None
    if not args.auth:
        raise ParleyError("--oidc-issuer needs --auth (without it there are no sign-ins)")
    if not args.oidc_issuer.startswith(("https://", "http://")):
        raise ParleyError(f"--oidc-issuer is a URL (https://...), not {args.oidc_issuer!r}")
    if not args.oidc_client_id:
        raise ParleyError("--oidc-issuer needs --oidc-client-id")
    secret = read_secret(args.oidc_client_secret_file, OIDC_SECRET_ENV, "OpenID Connect client secret")
    if secret is None:
        raise ParleyError(f"--oidc-issuer needs the client's secret: --oidc-client-secret-file or ${OIDC_SECRET_ENV}")
    return OIDCSettings(issuer=args.oidc_issuer, client_id=args.oidc_client_id, client_secret=secret,
                        name=args.oidc_name)


def web_settings(args: argparse.Namespace):
    """The web UI's settings from its flags; a ParleyError for a bad combination."""
    from parley.serving.cluster_auth import is_loopback
    from parley.web.arena import parse_weights
    from parley.web.services import WebSettings
    from parley.web.user_input import Limits

    if not is_loopback(args.host) and not args.auth:
        log.warning("serving on %s without --auth: everyone who can reach it shares one user and its history",
                    args.host)
    if args.signup != "closed" and not args.auth:
        raise ParleyError("--signup needs --auth (without it everyone is the local user)")
    if args.session_hours <= 0:
        raise ParleyError("--session-hours must be more than 0")
    return WebSettings(
        controller_address=args.controller_address, cluster_secret=cluster_secret(args), db_url=db_url(args), host=args.host, port=args.port,
        auth=args.auth, battle_weights=parse_weights(args.battle_weights), model_info_file=args.model_info,
        moderation=args.moderation, limits=Limits(max_input_chars=args.max_input_chars, max_turns=args.max_turns),
        leaderboard_file=args.leaderboard_file, leaderboard_interval_s=args.leaderboard_interval,
        mt_bench_judgments=args.mt_bench_judgments, max_concurrent_replies=args.max_concurrent_replies,
        max_waiting_replies=args.max_waiting_replies,
        embedding_model=None if args.embedding_model.lower() == "none" else args.embedding_model,
        signup=args.signup, session_hours=args.session_hours, oidc=oidc_settings(args))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from parley.web.app import create_app

    settings = web_settings(args)
    if args.log_level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), timeout_graceful_shutdown=5)
    return 0
