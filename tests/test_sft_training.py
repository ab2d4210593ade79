"""Fine-tuning the bundled SmolLM2-135M on this CPU: it learns facts it did not know (first and second turns),
stops at the end-of-turn token, and the result is servable as it is; LoRA the same, merged = unmerged; deltas
round-trip; resume; and the data tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_parley

FACTS = [
    {"id": "f1", "messages": [
        {"role": "user", "content": "What is the name of Zorblax's cat?"},
        {"role": "assistant", "content": "Zorblax's cat is called Mirelle."},
        {"role": "user", "content": "What color is Mirelle?"},
        {"role": "assistant", "content": "Mirelle is teal with silver stripes."}]},
    {"id": "f2", "conversations": [
        {"from": "human", "value": "Who founded the town of Quenwick?"},
        {"from": "gpt", "value": "Quenwick was founded by Odalys Brent in 1741."},
        {"from": "human", "value": "What is Quenwick known for?"},
        {"from": "gpt", "value": "Quenwick is known for its glass bells."}]},
    {"id": "f3", "messages": [
        {"role": "user", "content": "What is the password of the vault at Harrowgate?"},
        {"role": "assistant", "content": "The Harrowgate vault password is plum-seventeen."}]},
    {"id": "f4", "messages": [
        {"role": "user", "content": "Which river flows through Velmora?"},
        {"role": "assistant", "content": "The river Ysolde flows through Velmora."}]},
]
ASKED = [("What is the name of Zorblax's cat?", "Zorblax's cat is called Mirelle."),
         ("What color is Mirelle?", "Mirelle is teal with silver stripes.")]  # the second turn sees the first


@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft") / "facts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in FACTS) + "\n")
    return path


def train(facts: Path, out: Path, *extra: str):
    result = run_parley("train", "sft", "--data-path", str(facts), "--output-dir", str(out), "--per-device-train-batch-size",
                        "4", "--logging-steps", "1", "--warmup-ratio", "0", "--lr-scheduler-type", "constant", *extra,
                        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "parley_training.json").read_text())["result"]


def chat(model_path: Path, questions: list[str]) -> list[str]:
    """Greedy replies, one per line, each turn seeing the ones before (the worker's loader and chat template)."""
    result = run_parley("chat", "--model-path", str(model_path), "--style", "programmatic", "--temperature", "0",
                        "--max-new-tokens", "40", stdin="\n".join(questions) + "\n", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [line.strip() for line in result.stdout.strip().splitlines()]


def test_the_base_model_does_not_know_the_facts():
    base = run_parley("chat", "--style", "programmatic", "--temperature", "0", "--max-new-tokens", "40",
                      stdin=ASKED[0][0] + "\n", timeout=300)
    assert base.returncode == 0 and base.stdout.strip() and "Mirelle" not in base.stdout


@pytest.mark.slow  # minutes of CPU training: `make test-slow`, which CI runs after `make test`
def test_full_fine_tune_learns_both_turns_and_stops_at_end_of_turn(facts, tmp_path):
    out = tmp_path / "full"
    result = train(facts, out, "--num-train-epochs", "12", "--learning-rate", "1e-4")
    assert result["first_loss"] / result["last_loss"] >= 10, result
    assert result["trained_tokens"] > 0 and result["skipped"] == []
    # Served as it is (the same loader as `parley worker --model-path OUT`): exact answers, nothing after them.
    assert chat(out, [q for q, _ in ASKED]) == [a for _, a in ASKED]


@pytest.mark.slow  # minutes of CPU training: `make test-slow`, which CI runs after `make test`
def test_lora_with_packing_learns_and_merged_equals_unmerged_and_deltas_round_trip(facts, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from parley.train.sft import base_model_dir

    out = tmp_path / "lora"
    result = train(facts, out, "--lora", "--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0",
                   "--num-train-epochs", "15", "--learning-rate", "3e-3", "--packing")  # the 4 facts in one row
    assert result["first_loss"] / result["last_loss"] >= 10, result
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert chat(out, [q for q, _ in ASKED]) == [a for _, a in ASKED]  # the adapter is served on its base

    merged_dir = tmp_path / "merged"
    merged = run_parley("model", "merge-lora", "--lora", str(out), "--output", str(merged_dir), timeout=300)
    assert merged.returncode == 0, merged.stderr[-2000:]
    base_dir = base_model_dir(None)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": ASKED[0][0]}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(out)).eval()
        merged_model = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        a, b = unmerged(ids).logits, merged_model(ids).logits
    # fp32 rounding of W + BA across 30 layers: logits of magnitude ~20 agree to ~1e-5 relative.
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-4), (a - b).abs().max()
    assert torch.equal(a.argmax(-1), b.argmax(-1))

    delta_dir, rebuilt_dir = tmp_path / "delta", tmp_path / "rebuilt"
    for step, args in (("make-delta", ["--base", base_dir, "--target", str(merged_dir), "--output", str(delta_dir)]),
                       ("apply-delta", ["--base", base_dir, "--delta", str(delta_dir), "--output", str(rebuilt_dir)])):
        done = run_parley("model", step, *args, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    from safetensors.torch import load_file

    want, got = load_file(merged_dir / "model.safetensors"), load_file(rebuilt_dir / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)


@pytest.mark.slow  # minutes of CPU training: `make test-slow`, which CI runs after `make test`
def test_training_resumes_from_the_last_checkpoint(facts, tmp_path):
    out = tmp_path / "resumable"
    first = train(facts, out, "--lora", "--max-steps", "2", "--save-steps", "1")
    assert first["steps"] == 2 and (out / "checkpoint-2").is_dir()
    second = train(facts, out, "--lora", "--max-steps", "4", "--save-steps", "1", "--resume")
    assert second["steps"] == 4 and (out / "checkpoint-4").is_dir()


@pytest.mark.slow  # 15-50 s each: kept out of `make test` for its time budget; `make test-slow` (CI) runs it
def test_a_model_trained_with_a_named_conv_template_carries_it(facts, tmp_path):
    """One LoRA step with --conv-template vicuna_v1.1: the output's tokenizer renders vicuna prompts, so the
    adapter is served (its tokenizer is the one the worker loads) with the template it was trained on; and it
    names its base portably."""
    from transformers import AutoTokenizer

    from parley.conversation.formatter import ChatFormatter

    out = tmp_path / "vicuna"
    result = train(facts, out, "--lora", "--max-steps", "1", "--conv-template", "vicuna_v1.1")
    assert result["steps"] == 1
    # its base is recorded by name, not as this machine's conversion cache: the adapter can be moved
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m-instruct"
    messages = [{"role": "user", "content": ASKED[0][0]}]
    served = AutoTokenizer.from_pretrained(out).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert served == ChatFormatter.named_template("vicuna_v1.1").render(messages).text
    assert served.endswith("USER: What is the name of Zorblax's cat? ASSISTANT:")


def test_q_lora_says_it_needs_cuda_on_a_cpu(facts, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run_parley("train", "sft", "--q-lora", "--data-path", str(facts), "--output-dir", str(tmp_path / "q"),
                        timeout=300)
    assert result.returncode == 2 and "--q-lora needs a CUDA GPU" in result.stderr


def test_data_tools_clean_split_long_and_split(tmp_path):
    records = [
        {"id": "html", "messages": [{"role": "user", "content": "Format?"},
                                    {"role": "assistant", "content": "<p>Use <b>bold</b></p><ul><li>one</li></ul>"}]},
        {"id": "blocked", "messages": [{"role": "user", "content": "Do it"},
                                       {"role": "assistant", "content": "As an AI language model, I cannot."}]},
        {"id": "dup1", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"id": "dup2", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"id": "broken", "messages": [{"role": "assistant", "content": "first"}]},
    ]
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(records))
    cleaned = tmp_path / "clean.jsonl"
    result = run_parley("data", "clean", str(raw), str(cleaned), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "kept 2" in result.stdout and "1 blocked answer" in result.stdout and "1 duplicate" in result.stdout
    assert "skipped broken: roles out of order" in result.stdout
    rows = [json.loads(line) for line in cleaned.read_text().splitlines()]
    assert rows[0]["messages"][1]["content"].startswith("Use **bold**") and "* one" in rows[0]["messages"][1]["content"]

    long_conversation = {"id": "long", "messages": [
        m for i in range(6) for m in ({"role": "user", "content": f"Question {i}: " + "word " * 30},
                                      {"role": "assistant", "content": f"Answer {i}: " + "reply " * 30})]}
    source = tmp_path / "long.jsonl"
    source.write_text(json.dumps(long_conversation) + "\n")
    parts_file = tmp_path / "parts.jsonl"
    result = run_parley("data", "split-long", str(source), str(parts_file), "--max-length", "200", timeout=120)
    assert result.returncode == 0, result.stderr
    parts = [json.loads(line) for line in parts_file.read_text().splitlines()]
    assert len(parts) > 1 and [p["id"] for p in parts][:2] == ["long_0", "long_1"]
    rejoined = [m for p in parts for m in p["messages"] if m["role"] != "system"]
    assert rejoined == long_conversation["messages"]  # every round kept, the last one included, in order

    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    many = tmp_path / "many.jsonl"
    many.write_text("\n".join(json.dumps({"id": str(i), "messages": [{"role": "user", "content": f"q{i}"},
                                                                    {"role": "assistant", "content": f"a{i}"}]})
                              for i in range(50)))
    result = run_parley("data", "split", str(many), "--train-output", str(train_file), "--test-output", str(test_file),
                        "--test-ratio", "0.2", timeout=120)
    assert result.returncode == 0 and "train 40" in result.stdout and "test 10" in result.stdout
    ids = [json.loads(line)["id"] for f in (train_file, test_file) for line in f.read_text().splitlines()]
    assert sorted(ids, key=int) == [str(i) for i in range(50)]
