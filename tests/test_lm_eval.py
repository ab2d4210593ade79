"""lm-evaluation-harness end to end against parley: its `local-completions` model runs a log-likelihood (multiple
choice) task, the tiny local one in benchmarks/lm_eval_task, on the bundled model served by the llama.cpp engine,
tokenizing through parley's /tokenize (which it detects by itself) and scoring through /v1/completions with echo,
logprobs and token-id prompts. The log-likelihoods it reports are the ones a direct call returns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REPO, import_or_skip
from tests.servers import start_api, start_controller, start_worker

MODEL = "smollm2"
TASK = "parley_tiny_mc"


@pytest.fixture(scope="module")
def api():
    import_or_skip("lm_eval", "lm-evaluation-harness drives the API here")
    controller = start_controller()
    servers = [controller]
    try:
        servers.append(start_worker(controller, names=MODEL))  # the bundled GGUF: llama.cpp
        server = start_api(controller)
        servers.append(server)
        yield server
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.fixture(scope="module")
def evaluation(api, tmp_path_factory) -> tuple[dict, list[dict]]:
    """lm-eval's results and logged samples, from its command line as the README gives it."""
    out = tmp_path_factory.mktemp("lm-eval")
    command = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
               f"base_url={api.url}/v1/completions,model={MODEL},num_concurrent=4,tokenized_requests=True,max_retries=1",
               "--tasks", TASK, "--include_path", "benchmarks/lm_eval_task", "--output_path", str(out), "--log_samples"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    assert "Using remote tokenizer" in run.stderr  # it found /tokenizer_info and /tokenize, and used them
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob(f"samples_{TASK}_*.jsonl")).read_text().splitlines()]
    return results, samples


def test_lm_eval_scores_a_multiple_choice_task(evaluation):
    results, samples = evaluation
    scores = results["results"][TASK]
    assert "acc_norm,none" in scores
    assert len(samples) == 10 and all(len(s["filtered_resps"]) == len(s["doc"]["choices"]) for s in samples)
    assert scores["acc,none"] >= 0.5  # ten easy questions: the model gets most of them (measured: 8 of 10)


def test_the_loglikelihoods_lm_eval_got_are_what_the_api_returns(api, evaluation):
    _, samples = evaluation
    http = httpx.Client(base_url=api.url, timeout=120)

    def tokens(text: str) -> list[int]:
        return http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]

    pairs = [(a["arg_0"], a["arg_1"]) for s in samples for a in s["arguments"].values()]
    prompts, context_lengths = [], []
    for context, continuation in pairs:  # as lm-eval splits them: the whole text's tokens after the context's
        context_ids = tokens(context)
        prompts.append(tokens(context + continuation))
        context_lengths.append(len(context_ids))
        assert prompts[-1][: len(context_ids)] == context_ids
    reply = http.post("/v1/completions", json={"model": MODEL, "prompt": prompts, "echo": True, "logprobs": 1,
                                               "max_tokens": 1, "temperature": 0}).json()
    direct = [sum(c["logprobs"]["token_logprobs"][n:-1]) for c, n in zip(reply["choices"], context_lengths)]
    reported = [float(r[0]) for s in samples for r in s["filtered_resps"]]
    # llama.cpp's numbers differ slightly with what shares its batch (lm-eval sent 4 requests at once; its F16
    # arithmetic runs other kernels for other batch shapes): measured up to 0.015 nats on a continuation's sum.
    assert reported == pytest.approx(direct, abs=0.05)
    scores = iter(direct)
    for sample in samples:  # the same answers chosen (where no near-tie could flip it): lm-eval's accuracy
        row = sorted(((next(scores), i) for i in range(len(sample["doc"]["choices"]))), reverse=True)
        if row[0][0] - row[1][0] > 0.1:
            assert (row[0][1] == sample["doc"]["answer"]) == bool(sample["acc"])
