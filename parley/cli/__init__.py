"""The `parley` command: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from parley import __version__
from parley.cli import (
    api_cmd,
    bench_cmd,
    chat_cmd,
    controller_cmd,
    data_cmd,
    db_cmd,
    eval_cmd,
    knowledge_cmd,
    ray_cmd,
    serve_cmd,
    team_cmd,
    test_message_cmd,
    train_cmd,
    web_cmd,
    worker_cmd,
)
from parley.errors import ParleyError

SUBCOMMANDS = (chat_cmd, controller_cmd, worker_cmd, api_cmd, test_message_cmd, serve_cmd, bench_cmd, eval_cmd, db_cmd, web_cmd,
               train_cmd, data_cmd, knowledge_cmd, team_cmd, ray_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Serve, chat with, evaluate and fine-tune LLM chatbots.")
    parser.add_argument("--version", action="version", version=f"parley {__version__}")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default: INFO for servers, WARNING for other commands")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.log_level = args.log_level or getattr(args, "default_log_level", "WARNING")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call is noise
        # transformers reads this when (and only if) a command imports it: commands without a model never do
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        return args.run(args) or 0
    except ParleyError as exc:
        print(f"parley {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
