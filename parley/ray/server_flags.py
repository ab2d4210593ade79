"""The API's and the web UI's settings from their commands' flags (`parley api`, `parley web`), as the Serve config
gives them; a bad flag is a ParleyError naming it. No Ray here: `parley ray deploy` checks a config with it before
it sends the config."""

from __future__ import annotations

import argparse
import contextlib
import io

from parley.errors import ParleyError


def _parse(command: str, argv: list[str]) -> argparse.Namespace:
    from parley.cli import build_parser

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args([command, *argv])
    except SystemExit:
        said = errors.getvalue().strip().splitlines()
        raise ParleyError(f"bad {command} flags {' '.join(argv)}: {said[-1] if said else 'see --help'}") from None
    args.log_level = "INFO"
    return args


def api_settings_of(argv: list[str]):
    from parley.cli.api_cmd import api_settings

    return api_settings(_parse("api", argv))


def web_settings_of(argv: list[str]):
    from parley.cli.web_cmd import web_settings

    return web_settings(_parse("web", argv))
