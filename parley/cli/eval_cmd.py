"""`parley eval`: MT-bench results (and, to come, answers, judgments and Arena ratings)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from parley.errors import ParleyError


def default_data_dir() -> Path:
    """Where MT-bench's question, judge-prompt, answer and judgment files live by default:
    $PARLEY_DATA_DIR/mt_bench, else ~/.local/share/parley/mt_bench."""
    base = os.environ.get("PARLEY_DATA_DIR") or Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "parley"
    return Path(base) / "mt_bench"


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate models (MT-bench)", description=__doc__)
    tasks = p.add_subparsers(dest="eval_task", required=True, metavar="TASK")
    mt = tasks.add_parser("mt-bench", help="MT-bench with an LLM judge")
    steps = mt.add_subparsers(dest="mt_step", required=True, metavar="STEP")
    show = steps.add_parser("show", help="the results table of judgments (FastChat's show_result)")
    show.add_argument("--data-dir", type=Path, default=None,
                      help="holds question.jsonl and model_judgment/ (default: $PARLEY_DATA_DIR/mt_bench or "
                           "~/.local/share/parley/mt_bench)")
    show.add_argument("--mode", choices=["single"], default="single")
    show.add_argument("--input-file", type=Path, default=None,
                      help="a judgment file (default: DATA_DIR/model_judgment/JUDGE_single.jsonl)")
    show.add_argument("--judge-model", default="gpt-4")
    show.add_argument("--model-list", nargs="+", default=None, help="only these models")
    show.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    show.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown here")
    show.set_defaults(run=run_show)


def run_show(args: argparse.Namespace) -> int:
    from parley.eval.mt_bench_results import read_jsonl, single_scores, to_csv, to_markdown

    data_dir = args.data_dir or default_data_dir()
    path = args.input_file or data_dir / "model_judgment" / f"{args.judge_model}_single.jsonl"
    scores = single_scores(read_jsonl(path), args.model_list)
    if not scores:
        raise ParleyError(f"no judgments{' of ' + ', '.join(args.model_list) if args.model_list else ''} in {path}")
    table = Table(title=f"MT-bench, single grading by {args.judge_model} ({path.name})")
    for col in ("model", "first turn", "second turn", "average", "judgments", "failed"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for s in scores:
        table.add_row(s.model, *(f"{v:.2f}" if v is not None else "-" for v in (s.first_turn, s.second_turn, s.average)),
                      str(s.judgments), str(s.failures))
    console = Console() if Console().is_terminal else Console(width=160)
    console.print(table)
    failed = sum(s.failures for s in scores)
    if failed:
        console.print(f"{failed} judgment(s) failed (score -1) and are left out of the means")
    if args.csv:
        args.csv.write_text(to_csv(scores))
    if args.markdown:
        args.markdown.write_text(to_markdown(scores))
    return 0
