"""`parley db`: the web UI's database — migrate, add users, vote statistics, FastChat-format export."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from parley.cli.secret_args import add_db_url_arguments, db_url
from parley.errors import ParleyError


def add_parser(sub) -> None:
    p = sub.add_parser("db", help="the web UI's database: migrate, users, vote stats, export", description=__doc__)
    steps = p.add_subparsers(dest="db_step", required=True, metavar="STEP")
    for name, helptext, run in (("upgrade", "apply the migrations (the web UI does this at start)", run_upgrade),
                                ("stats", "vote and feedback counts", run_stats)):
        step = steps.add_parser(name, help=helptext)
        add_db_url_arguments(step)
        step.set_defaults(run=run)
    user = steps.add_parser("create-user", help="an account for `parley web --auth` (password read from the terminal "
                                                "or, with --password-stdin, from standard input)")
    user.add_argument("username")
    user.add_argument("--admin", action="store_true", help="may see vote statistics in the UI")
    user.add_argument("--password-stdin", action="store_true")
    add_db_url_arguments(user)
    user.set_defaults(run=run_create_user)
    export = steps.add_parser("export-logs", help="votes as FastChat conversation-log JSON lines")
    export.add_argument("output", type=Path)
    add_db_url_arguments(export)
    export.set_defaults(run=run_export)


def open_db(args):
    from parley.store.database import Database

    db = Database(db_url(args))
    db.upgrade()
    return db


def run_upgrade(args: argparse.Namespace) -> int:
    db = open_db(args)
    print(f"{db.display_url}: at revision {db.revision()}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from parley.store.votes import Votes

    print(Votes(open_db(args)).stats().model_dump_json(indent=2))
    return 0


def read_password(args: argparse.Namespace, prompt: str) -> str:
    """A password from standard input (--password-stdin), else typed twice at the terminal."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass(prompt)
    if getpass.getpass("again: ") != password:
        raise ParleyError("the passwords differ")
    return password


def run_create_user(args: argparse.Namespace) -> int:
    from parley.store.accounts import Accounts

    password = read_password(args, f"password for {args.username}: ")
    user = Accounts(open_db(args)).create(args.username, password, is_admin=args.admin)
    print(f"created {'admin ' if user.is_admin else ''}user {user.username}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from parley.store.votes import Votes

    n = Votes(open_db(args)).export_fastchat_log(args.output)
    print(f"wrote {n} votes to {args.output}")
    return 0
