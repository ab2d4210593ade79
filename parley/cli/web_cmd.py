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

log = logging.getLogger("parley.web")


def add_parser(sub) -> None:
    p = sub.add_parser("web", help="the web UI (chat, arena, leaderboard, history)", description=__doc__)
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    add_db_url_arguments(p)
    p.add_argument("--auth", action="store_true",
                   help="require login (accounts: `parley db create-user`); without it everyone is the local user")
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


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from parley.serving.cluster_auth import is_loopback
    from parley.web.app import create_app
    from parley.web.arena import parse_weights
    from parley.web.services import WebSettings
    from parley.web.user_input import Limits

    if not is_loopback(args.host) and not args.auth:
        log.warning("serving on %s without --auth: everyone who can reach it shares one user and its history",
                    args.host)
    settings = WebSettings(
        controller_address=args.controller_address, cluster_secret=cluster_secret(args), db_url=db_url(args), host=args.host, port=args.port,
        auth=args.auth, battle_weights=parse_weights(args.battle_weights), model_info_file=args.model_info,
        moderation=args.moderation, limits=Limits(max_input_chars=args.max_input_chars, max_turns=args.max_turns),
        leaderboard_file=args.leaderboard_file, leaderboard_interval_s=args.leaderboard_interval,
        mt_bench_judgments=args.mt_bench_judgments, max_concurrent_replies=args.max_concurrent_replies,
        max_waiting_replies=args.max_waiting_replies,
        embedding_model=None if args.embedding_model.lower() == "none" else args.embedding_model)
    if args.log_level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), timeout_graceful_shutdown=5)
    return 0
