"""`parley eval`: MT-bench (answers, judgments, results) and Arena ratings from votes."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rich.console import Console
from rich.table import Table

from parley.errors import ParleyError

DATA_DIR_HELP = ("the benchmark's directory: question.jsonl, judge_prompts.jsonl, reference_answer/, model_answer/, "
                 "model_judgment/ (default: $PARLEY_DATA_DIR/BENCH or ~/.local/share/parley/BENCH)")


def _console() -> Console:
    return Console() if Console().is_terminal else Console(width=160)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)
    p.add_argument("--bench", "--bench-name", dest="bench", default="mt_bench",
                   help="the benchmark's directory name under the data home (default: mt_bench)")


def _key(value: str | None, path: str | None) -> str | None:
    from parley.cli.secret_args import read_secret

    return value or read_secret(path, None, "API key")


def _server(p: argparse.ArgumentParser, who: str, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}base-url", required=True, help=f"the {who}'s OpenAI-compatible endpoint, e.g. "
                   "http://127.0.0.1:8000/v1 (parley api), a vLLM server or https://api.openai.com/v1")
    p.add_argument(f"--{prefix}api-key-file", default=None, metavar="PATH",
                   help="file holding the API key (default: $OPENAI_API_KEY, sent only to api.openai.com and the "
                        "hosts in $PARLEY_OPENAI_KEY_HOSTS; else none)")
    p.add_argument(f"--{prefix}api-key", default=None, help=argparse.SUPPRESS)  # visible in `ps`: kept for old scripts
    p.add_argument("--parallel", type=int, default=1, help="concurrent requests (default: 1)")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed call, with backoff (default: 3)")
    p.add_argument("--question-begin", type=int, default=None, help="first question (index in the file)")
    p.add_argument("--question-end", type=int, default=None, help="stop before this question (index in the file)")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate models: MT-bench with an LLM judge, Arena ratings", description=__doc__)
    tasks = p.add_subparsers(dest="eval_task", required=True, metavar="TASK")
    mt = tasks.add_parser("mt-bench", help="MT-bench with an LLM judge",
                          description="MT-bench: answers (gen-answer), judgments (judge) and results (show).")
    steps = mt.add_subparsers(dest="mt_step", required=True, metavar="STEP")

    gen = steps.add_parser("gen-answer", help="a model's answers to every question, both turns")
    _common(gen)
    gen.add_argument("--model", required=True, help="the model name the server knows")
    gen.add_argument("--model-id", default=None, help="the name in the answer file (default: --model)")
    _server(gen, "model's server")
    gen.add_argument("--num-choices", type=int, default=1, help="answers per question (default: 1)")
    gen.add_argument("--max-tokens", "--max-new-token", dest="max_tokens", type=int, default=1024,
                     help="tokens per answer (default: 1024)")
    gen.add_argument("--force-temperature", type=float, default=None,
                     help="one temperature for all (default: per category, as FastChat)")
    gen.add_argument("--system-prompt", default=None, help="a system message before the question (default: none)")
    gen.add_argument("--answer-file", type=Path, default=None, help="default: DATA_DIR/model_answer/MODEL_ID.jsonl")
    gen.set_defaults(run=run_gen_answer)

    judge = steps.add_parser("judge", help="grade answers with an LLM judge (single or pairwise)")
    _common(judge)
    judge.add_argument("--judge-model", required=True, help="the judge's model name at its server")
    _server(judge, "judge's server", prefix="judge-")
    judge.add_argument("--mode", choices=["single", "pairwise-baseline", "pairwise-all"], default="single")
    judge.add_argument("--baseline-model", default="gpt-3.5-turbo", help="for pairwise-baseline (default: gpt-3.5-turbo)")
    judge.add_argument("--model-list", nargs="+", default=None, help="models to judge (default: all in model_answer/)")
    judge.add_argument("--reference-model", default="gpt-4",
                       help="reference answers: DATA_DIR/reference_answer/MODEL.jsonl (default: gpt-4)")
    judge.add_argument("--judge-max-tokens", type=int, default=2048, help="tokens per judgment (default: 2048)")
    judge.add_argument("--retry-failed", action="store_true", help="judge again what failed in an earlier run")
    judge.add_argument("--output-file", type=Path, default=None,
                       help="default: DATA_DIR/model_judgment/JUDGE_single.jsonl or JUDGE_pair.jsonl")
    judge.set_defaults(run=run_judge)

    show = steps.add_parser("show", help="the results table of judgments (FastChat's show_result)")
    _common(show)
    show.add_argument("--mode", choices=["single", "pairwise-baseline", "pairwise-all"], default="single")
    show.add_argument("--input-file", type=Path, default=None,
                      help="a judgment file (default: DATA_DIR/model_judgment/JUDGE_single.jsonl or _pair.jsonl)")
    show.add_argument("--judge-model", default="gpt-4")
    show.add_argument("--baseline-model", default="gpt-3.5-turbo", help="for pairwise-baseline")
    show.add_argument("--model-list", nargs="+", default=None, help="only these models")
    show.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    show.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown here")
    show.add_argument("--radar", type=Path, default=None,
                      help="single mode: write a radar chart of per-category scores here (PNG; needs question.jsonl)")
    show.set_defaults(run=run_show)

    from parley.cli import ratings_cmd

    ratings_cmd.add_parser(tasks)


def _data_dir(args) -> Path:
    from parley.eval.mt_bench_files import bench_dir

    return bench_dir(args.data_dir, args.bench)


def _questions(args, data_dir: Path):
    from parley.eval.mt_bench_files import load_questions

    questions = load_questions(data_dir / "question.jsonl", args.question_begin, args.question_end)
    if not questions:
        raise ParleyError(f"no questions selected from {data_dir / 'question.jsonl'}")
    return questions


def run_gen_answer(args: argparse.Namespace) -> int:
    from parley.eval.chat_client import ChatClient
    from parley.eval.mt_bench_answers import generate_answers

    data_dir = _data_dir(args)
    questions = _questions(args, data_dir)
    model_id = args.model_id or args.model
    answer_file = args.answer_file or data_dir / "model_answer" / f"{model_id.replace('/', '--')}.jsonl"
    console = _console()
    console.print(f"{len(questions)} questions -> {answer_file}")

    async def main():
        client = ChatClient(args.model, args.base_url, _key(args.api_key, args.api_key_file), retries=args.retries)
        try:
            return await generate_answers(client, model_id, questions, answer_file, parallel=args.parallel,
                                          num_choices=args.num_choices, max_tokens=args.max_tokens,
                                          force_temperature=args.force_temperature, system_prompt=args.system_prompt)
        finally:
            await client.aclose()

    run = asyncio.run(main())
    console.print(f"answered {run.answered}, already done {run.skipped}, failed {len(run.failed)}; {run.usage.line()}")
    for question_id, why in run.failed.items():
        console.print(f"  question {question_id}: {why}", markup=False)
    if run.failed:
        console.print("failed questions are not in the file: run the same command again to retry them")
        return 1
    return 0


def run_judge(args: argparse.Namespace) -> int:
    from parley.eval.chat_client import ChatClient
    from parley.eval.mt_bench_files import load_answers, load_judge_prompts, read_jsonl
    from parley.eval.mt_bench_judge import (
        Judge,
        judgment_file,
        make_matches,
        run_judgments,
    )

    data_dir = _data_dir(args)
    questions = _questions(args, data_dir)
    prompts = load_judge_prompts(data_dir / "judge_prompts.jsonl")
    models = args.model_list
    if models and args.mode == "pairwise-baseline" and args.baseline_model not in models:
        models = [*models, args.baseline_model]
    answers = load_answers(data_dir / "model_answer", models)
    reference_file = data_dir / "reference_answer" / f"{args.reference_model}.jsonl"
    references = {r["question_id"]: r for r in read_jsonl(reference_file)} if reference_file.is_file() else {}
    matches, plan = make_matches(args.mode, questions, answers, prompts, references, args.baseline_model)
    output = args.output_file or judgment_file(data_dir, args.judge_model, args.mode)
    console = _console()
    console.print(f"{plan.matches} judgments ({args.mode}) of {', '.join(sorted(answers))} by {args.judge_model} -> {output}")
    for line in plan.missing_answers:
        console.print(f"  no answer, not judged: {line}", markup=False)
    if plan.missing_references:
        console.print(f"  no reference answer in {reference_file}, judged without one: questions "
                      f"{', '.join(plan.missing_references)}", markup=False)

    async def main():
        client = ChatClient(args.judge_model, args.judge_base_url, _key(args.judge_api_key, args.judge_api_key_file),
                            retries=args.retries)
        try:
            return await run_judgments(Judge(client, args.judge_max_tokens), matches, output, parallel=args.parallel,
                                       retry_failed=args.retry_failed)
        finally:
            await client.aclose()

    run = asyncio.run(main())
    console.print(f"judged {run.judged}, already done {run.skipped}, failed {run.failed} "
                  f"(recorded as score -1 / winner \"error\"); judge tokens: {run.usage.line()}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from parley.eval.mt_bench_files import load_questions, read_jsonl
    from parley.eval.mt_bench_judge import judgment_file
    from parley.eval.mt_bench_results import (
        category_scores,
        pair_scores,
        radar_chart,
        single_scores,
        table_rows,
        to_csv,
        to_markdown,
    )

    data_dir = _data_dir(args)
    path = args.input_file or judgment_file(data_dir, args.judge_model, args.mode)
    judgments = read_jsonl(path)
    if args.mode == "single":
        scores = single_scores(judgments, args.model_list)
        failed = sum(s.failures for s in scores)
        title = f"MT-bench, single grading by {args.judge_model} ({path.name})"
    else:
        baseline = args.baseline_model if args.mode == "pairwise-baseline" else None
        scores, failed = pair_scores(judgments, args.model_list, baseline)
        title = f"MT-bench, pairwise ({args.mode}{', baseline ' + baseline if baseline else ''}) by {args.judge_model}"
    if not scores:
        raise ParleyError(f"no {args.mode} judgments{' of ' + ', '.join(args.model_list) if args.model_list else ''} "
                          f"in {path}")
    header, rows = table_rows(scores)
    table = Table(title=title)
    for col in header:
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        table.add_row(*(cell or "-" for cell in row))
    console = _console()
    console.print(table)
    if failed and args.mode == "single":
        console.print(f"{failed} judgment(s) failed (score -1) and are left out of the means")
    elif failed:
        console.print(f"{failed} pair(s) with a failed verdict (winner \"error\") are left out of the counts")
    if args.csv:
        args.csv.write_text(to_csv(scores))
    if args.markdown:
        args.markdown.write_text(to_markdown(scores))
    if args.radar:
        if args.mode != "single":
            raise ParleyError("--radar needs --mode single")
        questions = [q.model_dump() for q in load_questions(data_dir / "question.jsonl")]
        listed = {s.model for s in scores}
        per_category = category_scores((j for j in judgments if j["model"] in listed), questions)
        ordered = {s.model: per_category[s.model] for s in scores if s.model in per_category}
        if ordered:
            console.print(f"radar chart: {radar_chart(ordered, args.radar, title)}")
        else:
            console.print("radar chart: no valid judgments to chart")
    return 0
