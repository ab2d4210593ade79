"""Secrets on the command line: each comes from a file or an environment variable, never from a flag's
value (which `ps` shows every user of the machine)."""

from __future__ import annotations

import argparse
import logging

from parley.errors import ParleyError
from parley.secret_files import read_secret
from parley.serving.cluster_auth import ENV_VAR as CLUSTER_SECRET_ENV
from parley.serving.cluster_auth import ClusterSecretError, check_secret

log = logging.getLogger("parley.cli")

API_KEYS_ENV = "PARLEY_API_KEYS"
DB_URL_ENV = "PARLEY_DB_URL"


def add_cluster_secret_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster-secret-file", default=None, metavar="PATH",
                        help="file holding the secret the controller, workers, API and web UI share (default: "
                             f"${CLUSTER_SECRET_ENV}; none: the cluster is open, as FastChat's is)")


def cluster_secret(args: argparse.Namespace) -> str | None:
    path = getattr(args, "cluster_secret_file", None)
    secret = read_secret(path, CLUSTER_SECRET_ENV, "cluster secret")
    if secret is None:
        return None
    try:
        return check_secret(secret, path or f"${CLUSTER_SECRET_ENV}")
    except ClusterSecretError as exc:
        raise ParleyError(str(exc)) from None


def add_api_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-keys-file", default=None, metavar="PATH",
                        help=f"file with the API keys clients must send, one per line (default: ${API_KEYS_ENV}, "
                             "comma-separated; none: no key needed)")
    parser.add_argument("--api-keys", default=None, help=argparse.SUPPRESS)  # visible in `ps`: kept for old scripts


def api_keys(args: argparse.Namespace) -> list[str]:
    if args.api_keys:
        log.warning("--api-keys puts the keys on the command line, where `ps` shows them to every user of this "
                    "machine; use --api-keys-file or $%s", API_KEYS_ENV)
        text = args.api_keys
    else:
        text = read_secret(args.api_keys_file, API_KEYS_ENV, "API keys") or ""
    return [k.strip() for k in text.replace("\n", ",").split(",") if k.strip()]


def add_db_url_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db-url", default=None,
                        help="sqlite:///PATH, or postgresql://... without a password here (put a URL with a password in "
                             f"--db-url-file or ${DB_URL_ENV}); default: ~/.local/share/parley/parley.db")
    parser.add_argument("--db-url-file", default=None, metavar="PATH", help="file holding the database URL")


def db_url(args: argparse.Namespace) -> str | None:
    if args.db_url:
        if _has_password(args.db_url):
            log.warning("--db-url holds a password, which `ps` shows to every user of this machine; use "
                        "--db-url-file or $%s", DB_URL_ENV)
        return args.db_url
    return read_secret(args.db_url_file, DB_URL_ENV, "database URL")


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return bool(make_url(url).password)
    except ArgumentError:
        return False
