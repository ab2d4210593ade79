"""`parley keys`, `parley usage` and `parley users`: API keys, usage and accounts, in the store the web UI and
the API share (what the web UI's Account and Admin pages do, from a terminal with access to the database).

Keys are made for a user (`--user NAME`; default: the local user of a UI without --auth). The secret is printed
once; only its hash is kept.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

from parley.cli.db_cmd import open_db, read_password
from parley.cli.secret_args import add_db_url_arguments
from parley.errors import ParleyError


def _limit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpm", type=int, default=None, help="requests per minute")
    p.add_argument("--tpm", type=int, default=None, help="tokens (prompt + completion) per minute")
    p.add_argument("--budget", type=int, default=None, help="tokens per budget period")
    p.add_argument("--period", choices=["day", "month"], default=None, help="the budget's period (default: month)")


def add_parser(sub) -> None:
    k = sub.add_parser("keys", help="API keys: create, list, revoke", description=__doc__)
    steps = k.add_subparsers(dest="keys_step", required=True, metavar="STEP")
    p = steps.add_parser("create", help="a new key (its secret is printed once)")
    p.add_argument("--user", default=None, help="whose key (default: the local user)")
    p.add_argument("--name", required=True, help="what it is for, e.g. 'ci' or 'laptop'")
    _limit_arguments(p)
    p.add_argument("--models", default=None, help="comma-separated models and assistants it may use (default: all)")
    add_db_url_arguments(p)
    p.set_defaults(run=run_keys_create)
    p = steps.add_parser("list", help="keys (prefix, owner, limits, revoked or not)")
    p.add_argument("--user", default=None, help="one user's keys (default: everyone's)")
    add_db_url_arguments(p)
    p.set_defaults(run=run_keys_list)
    p = steps.add_parser("revoke", help="revoke a key: the API refuses it within seconds")
    p.add_argument("key_id", help="its id (key_…), as `parley keys list` shows")
    add_db_url_arguments(p)
    p.set_defaults(run=run_keys_revoke)

    u = sub.add_parser("usage", help="tokens and requests by user, key, model and day", description=__doc__)
    u.add_argument("--by", default="user,model,day", help="any of user,key,model,day (default: %(default)s)")
    u.add_argument("--user", default=None, help="one user's usage (default: everyone's)")
    u.add_argument("--since", type=date.fromisoformat, default=None, help="first day, YYYY-MM-DD (UTC)")
    u.add_argument("--until", type=date.fromisoformat, default=None, help="last day, YYYY-MM-DD (UTC)")
    u.add_argument("--csv", action="store_true", help="CSV on standard output instead of a table")
    add_db_url_arguments(u)
    u.set_defaults(run=run_usage)

    a = sub.add_parser("users", help="accounts: list, approve, disable, admin rights, limits, password",
                       description=__doc__)
    steps = a.add_subparsers(dest="users_step", required=True, metavar="STEP")
    p = steps.add_parser("list", help="accounts, their status, sign-in and limits")
    add_db_url_arguments(p)
    p.set_defaults(run=run_users_list)
    for name, helptext in (("approve", "activate an account that awaits approval"),
                           ("disable", "disable an account: its sessions and keys stop working"),
                           ("enable", "enable a disabled account")):
        p = steps.add_parser(name, help=helptext)
        p.add_argument("username")
        add_db_url_arguments(p)
        p.set_defaults(run=run_users_status, status="disabled" if name == "disable" else "active")
    p = steps.add_parser("admin", help="grant admin rights (or --revoke them)")
    p.add_argument("username")
    p.add_argument("--revoke", action="store_true")
    add_db_url_arguments(p)
    p.set_defaults(run=run_users_admin)
    p = steps.add_parser("limits", help="set an account's limits (for its keys and web use together; "
                                        "a limit left out is removed)")
    p.add_argument("username")
    _limit_arguments(p)
    add_db_url_arguments(p)
    p.set_defaults(run=run_users_limits)
    p = steps.add_parser("password", help="set an account's password (read from the terminal or, with "
                                          "--password-stdin, from standard input); its sessions end")
    p.add_argument("username")
    p.add_argument("--password-stdin", action="store_true")
    add_db_url_arguments(p)
    p.set_defaults(run=run_users_password)


def _user(accounts, username: str | None):
    if username is None:
        return accounts.local_user()
    user = accounts.get(username)
    if user is None:
        raise ParleyError(f"no user {username!r} (`parley users list` shows them)")
    return user


def _print(table) -> None:
    """A rich table; piped or redirected, at full width (ids cut short would be of no use)."""
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 240).print(table)


def _limits(args):
    from pydantic import ValidationError

    from parley.store.limits import Limits

    try:
        return Limits(rpm=args.rpm, tpm=args.tpm, token_budget=args.budget, budget_period=args.period)
    except ValidationError as exc:
        raise ParleyError(f"limits must be positive numbers: {exc.errors()[0]['msg']}") from None


def run_keys_create(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from parley.store.accounts import Accounts
    from parley.store.api_keys import ApiKeys, KeySpec

    db = open_db(args)
    user = _user(Accounts(db), args.user)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models is not None else None
    try:
        spec = KeySpec(name=args.name, models=models, **_limits(args).model_dump())
    except ValidationError as exc:
        raise ParleyError(f"{exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    made = ApiKeys(db).create(user, spec)
    print(f"created key {made.key.id} ({made.key.name!r}) for {user.username}; limits: {made.key.limits.describe()}; "
          f"models: {', '.join(made.key.models) if made.key.models is not None else 'all'}", file=sys.stderr)
    print("the secret, shown this once (only its hash is kept):", file=sys.stderr)
    print(made.secret)
    return 0


def run_keys_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from parley.store.accounts import Accounts
    from parley.store.api_keys import ApiKeys

    db = open_db(args)
    user = _user(Accounts(db), args.user) if args.user else None
    table = Table("id", "name", "owner", "prefix", "created", "limits", "models", "revoked")
    for k in ApiKeys(db).list(user):
        table.add_row(k.id, k.name, k.owner, k.prefix, f"{k.created_at:%Y-%m-%d %H:%M}", k.limits.describe(),
                      ", ".join(k.models) if k.models is not None else "all",
                      f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    _print(table)
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    from parley.store.accounts import Accounts
    from parley.store.api_keys import ApiKeys
    from parley.store.conversations import NotFound

    db = open_db(args)
    try:
        key = ApiKeys(db).revoke(Accounts(db).local_user(), args.key_id)  # the local user is an admin
    except NotFound:
        raise ParleyError(f"no key {args.key_id!r} (`parley keys list` shows them)") from None
    print(f"revoked {key.id} ({key.name!r}) of {key.owner}; the API refuses it within seconds")
    return 0


def run_usage(args: argparse.Namespace) -> int:
    from rich.table import Table

    from parley.store.accounts import Accounts
    from parley.store.usage import GROUPS, Usage, parse_groups, to_csv

    try:
        by = parse_groups(args.by)
    except ValueError as exc:
        raise ParleyError(f"--by: {exc}") from None
    db = open_db(args)
    user_id = _user(Accounts(db), args.user).id if args.user else None
    rows = Usage(db).summary(by, user_id=user_id, since=args.since, until=args.until)
    if args.csv:
        sys.stdout.write(to_csv(rows, by))
        return 0
    columns = [g for g in GROUPS if g in by]
    table = Table(*columns, "requests", "prompt tokens", "completion tokens", "total tokens", "errors", "mean ms",
                  title="usage" + (f" of {args.user}" if args.user else ""))
    for r in rows:
        cells = {"user": r.user or "(none)", "key": r.key or "(no key)", "model": r.model or "",
                 "day": r.day.isoformat() if r.day else ""}
        table.add_row(*(cells[c] for c in columns), str(r.requests), str(r.prompt_tokens), str(r.completion_tokens),
                      str(r.total_tokens), str(r.errors), f"{r.mean_latency_ms:.0f}")
    _print(table if rows else "no usage recorded" + (" in that range" if args.since or args.until else ""))
    return 0


def run_users_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from parley.store.accounts import Accounts

    table = Table("id", "username", "status", "admin", "sign-in", "created", "last sign-in", "limits")
    for u in Accounts(open_db(args)).list():
        table.add_row(str(u.id), u.username, u.status, "yes" if u.is_admin else "", u.sign_in,
                      f"{u.created_at:%Y-%m-%d}", f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "",
                      u.limits.describe())
    _print(table)
    return 0


def _update(args, **change) -> int:
    from parley.store.accounts import Accounts

    accounts = Accounts(open_db(args))
    user = accounts.update(_user(accounts, args.username).id, **change)
    print(f"{user.username}: {user.status}{', admin' if user.is_admin else ''}")
    return 0


def run_users_status(args: argparse.Namespace) -> int:
    return _update(args, status=args.status)


def run_users_admin(args: argparse.Namespace) -> int:
    return _update(args, is_admin=not args.revoke)


def run_users_limits(args: argparse.Namespace) -> int:
    from parley.store.accounts import Accounts

    accounts = Accounts(open_db(args))
    limits = _limits(args)
    accounts.update(_user(accounts, args.username).id, limits=limits)
    print(f"{args.username}: limits {limits.describe()}")
    return 0


def run_users_password(args: argparse.Namespace) -> int:
    from parley.store.accounts import Accounts

    accounts = Accounts(open_db(args))
    user = _user(accounts, args.username)
    accounts.set_password(user.id, read_password(args, f"new password for {user.username}: "))
    print(f"{user.username}: password set; their sessions have ended")
    return 0
