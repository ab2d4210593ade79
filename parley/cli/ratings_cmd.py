"""`parley eval ratings`: the Arena leaderboard from pairwise votes."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from parley.errors import ParleyError


def add_parser(tasks) -> None:
    p = tasks.add_parser("ratings", help="Arena ratings (Bradley–Terry, Elo) with intervals from pairwise votes",
                         description="Arena ratings from votes: FastChat-format conversation logs (leftvote, rightvote, "
                                     "tievote, bothbad_vote records) or battle files, cleaned as FastChat does.")
    p.add_argument("inputs", nargs="*", type=Path, help="log or battle files (JSON / JSON lines), or directories of them")
    p.add_argument("--db-url", default=None,
                   help="also read the votes stored by the web UI in this database (e.g. sqlite:///PATH or "
                        "postgresql://...; `--db-url default` is the web UI's default SQLite file)")
    p.add_argument("--output-dir", type=Path, default=Path("arena_ratings"),
                   help="where leaderboard.json/.md/.csv and the PNG plots go (default: ./arena_ratings)")
    p.add_argument("--include-named", action="store_true", help="also count side-by-side battles with named models")
    p.add_argument("--keep-identity-leaks", action="store_true",
                   help="keep battles whose answers name a model or its maker (dropped by default)")
    p.add_argument("--style-control", action="store_true",
                   help="control for answer length and markdown (headers, lists, bold)")
    p.add_argument("--bootstrap-rounds", type=int, default=1000, help="Bradley–Terry bootstrap rounds (default: 1000)")
    p.add_argument("--elo-rounds", type=int, default=100, help="online Elo bootstrap rounds (default: 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(run=run_ratings)


def run_ratings(args: argparse.Namespace) -> int:
    from parley.eval import arena_leaderboard
    from parley.eval.arena_battles import load_battles

    if not args.inputs and not args.db_url:
        raise ParleyError("name vote logs or battle files, or --db-url")
    stored = []
    if args.db_url:
        from parley.store.database import Database
        from parley.store.votes import Votes

        db = Database(None if args.db_url == "default" else args.db_url)
        try:
            stored = Votes(db).battles()
        finally:
            db.close()
    battles, cleaning = load_battles(args.inputs, anony_only=not args.include_named, keep_leaks=args.keep_identity_leaks,
                                     extra=stored)
    console = Console() if Console().is_terminal else Console(width=160)
    dropped = ", ".join(f"{n} {why}" for why, n in sorted(cleaning.dropped.items())) or "none"
    console.print(f"{cleaning.records} records -> {cleaning.battles} battles (dropped: {dropped})", markup=False)
    if len({b.model_a for b in battles} | {b.model_b for b in battles}) < 2:
        raise ParleyError("fewer than two models with battles: nothing to rate")
    with Progress(console=console) as progress:
        task = progress.add_task("bootstrap", total=args.bootstrap_rounds + args.elo_rounds)
        board = arena_leaderboard.build(battles, cleaning, rounds=args.bootstrap_rounds, elo_rounds=args.elo_rounds,
                                        style=args.style_control, seed=args.seed,
                                        progress=lambda: progress.advance(task))
    table = Table(title=f"Arena ratings ({board.method}) from {board.battles} battles")
    for col in arena_leaderboard.HEADER:
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in board.rows:
        table.add_row(*arena_leaderboard.cells(row))
    console.print(table)
    if board.style_coefficients:
        console.print("style coefficients: " + ", ".join(f"{k} {v:+.3f}" for k, v in board.style_coefficients.items()))
    for path in arena_leaderboard.write(board, args.output_dir, plots=not args.no_plots):
        console.print(f"wrote {path}")
    return 0
