"""The API's and the web UI's settings from their commands' flags (`parley api`, `parley web`), as the Serve config
gives them; a bad flag is a ParleyError naming it. No Ray here: `parley ray deploy` checks a config with it before
it sends the config."""

from __future__ import annotations

import argparse
import contextlib
import io

from parley.errors import ParleyError


def parse_server_flags(command: str, argv: list[str]) -> argparse.Namespace:
    from parley.cli import build_parser

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args([command, *argv])
    except SystemExit:
        said = errors.getvalue().strip().splitlines()
        raise ParleyError(f"bad {command} flags {' '.join(argv)}: {said[-1] if said else 'see --help'}") from None
    known = _option_strings(command)
    unknown = [a for a in argv if a.startswith("--") and a not in known]  # argparse would take an abbreviation
    if unknown:
        raise ParleyError(f"unknown {command} flags: {' '.join(unknown)} (see `parley {command} --help`)")
    args.log_level = "INFO"
    return args


def _option_strings(command: str) -> set[str]:
    from parley.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(subparsers.choices[command]._option_string_actions)


def api_settings_of(argv: list[str]):
    from parley.cli.api_cmd import api_settings

    return api_settings(parse_server_flags("api", argv))


def web_settings_of(argv: list[str]):
    from parley.cli.web_cmd import web_settings

    return web_settings(parse_server_flags("web", argv))
