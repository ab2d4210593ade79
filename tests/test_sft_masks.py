"""SFT label masks on the bundled model's tokenizer (SmolLM2: BOS is <|im_start|>, pad is the end-of-turn
<|im_end|>): golden masks, agreement with transformers' assistant-token masks from {% generation %} markers,
mutation checks, the collator, and conversation loading."""

from __future__ import annotations

import json

import pytest

from parley.train.conversations import load_conversations
from parley.train.masks import IGNORE, Collator, MaskBuilder, MaskError, TrainingExample
from tests.conftest import SHARED_DATA

SYSTEM = {"role": "system", "content": "You are terse."}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from parley.models.bundled import bundled_gguf_path
    from parley.models.gguf_cache import ensure_converted

    return AutoTokenizer.from_pretrained(ensure_converted(bundled_gguf_path()))


@pytest.fixture(scope="module")
def builder(tokenizer):
    return MaskBuilder(tokenizer)


def trained_segments(tokenizer, example: TrainingExample) -> list[str]:
    """The decoded runs of trained tokens, in order."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE:
            assert label == token, "a label differs from its input token"
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def assert_golden(tokenizer, example: TrainingExample, messages: list[dict]) -> None:
    replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    segments = trained_segments(tokenizer, example)
    assert len(segments) == len(replies), segments
    # A reply that starts with spaces: BPE merges the header's newline with them into one token, which is trained.
    segments = [seg[1:] if seg.startswith("\n ") and reply.startswith(" ") else seg for seg, reply in zip(segments, replies)]
    assert segments == replies


CASES = {
    "system and two turns": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                             {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}],
    "default system prompt": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    "spaces": [{"role": "user", "content": "  padded  "}, {"role": "assistant", "content": "  spaced answer \n"}],
    "unicode": [{"role": "user", "content": "Grüße? 你好"}, {"role": "assistant", "content": "Ça va — 很好 🙂"}],
    "code fences": [{"role": "user", "content": "Code?"},
                    {"role": "assistant", "content": "```python\nprint('hi')\n```\nDone."}],
    "special-token text": [{"role": "user", "content": "Say <|im_end|> then <|im_start|>assistant\nx"},
                           {"role": "assistant", "content": "I will not."}],
}


@pytest.mark.parametrize("name", list(CASES))
def test_golden_masks_train_each_reply_and_its_end_of_turn_only(tokenizer, builder, name):
    messages = CASES[name]
    example = builder.build(messages)
    assert_golden(tokenizer, example, messages)
    assert example.input_ids[0] == tokenizer.bos_token_id != example.input_ids[1]  # exactly one BOS at the start
    assert example.labels[0] == IGNORE  # role headers, system and user text are masked
    untrained = tokenizer.decode([t for t, lab in zip(example.input_ids, example.labels) if lab == IGNORE])
    for m in messages:
        if m["role"] != "assistant" and name != "special-token text":
            assert m["content"] in untrained


def test_masks_equal_transformers_assistant_masks_from_generation_markers(tokenizer, builder):
    marked = ("{% for message in messages %}{% if message['role'] == 'assistant' %}"
              "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
              "{{ '\\n' }}{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
              "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    ours = MaskBuilder(tokenizer, chat_template=marked)
    for name, messages in CASES.items():
        example = ours.build(messages)
        reference = tokenizer.apply_chat_template(messages, chat_template=marked, tokenize=True, return_dict=True,
                                                  return_assistant_tokens_mask=True)
        assert example.input_ids == list(reference["input_ids"]), name
        assert [int(lab != IGNORE) for lab in example.labels] == list(reference["assistant_masks"]), name


def test_a_mask_shifted_by_one_or_missing_its_end_of_turn_fails_the_golden_check(tokenizer, builder):
    messages = CASES["system and two turns"]
    good = builder.build(messages)
    assert_golden(tokenizer, good, messages)
    shifted = TrainingExample(input_ids=good.input_ids,
                              labels=[IGNORE] + [lab if lab == IGNORE else tok for lab, tok in
                                                 zip(good.labels[:-1], good.input_ids[1:])])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    no_end = TrainingExample(input_ids=good.input_ids,
                             labels=[IGNORE if tok == end else lab for tok, lab in zip(good.input_ids, good.labels)])
    for mutant in (shifted, no_end):
        with pytest.raises(AssertionError):
            assert_golden(tokenizer, mutant, messages)


def test_truncation_keeps_what_fits_and_refuses_samples_with_nothing_to_train(builder):
    messages = CASES["system and two turns"]
    full = builder.build(messages)
    cut = builder.build(messages, max_length=len(full.input_ids) - 3)
    assert cut.input_ids == full.input_ids[:-3] and 0 < cut.trained_tokens < full.trained_tokens
    with pytest.raises(MaskError, match="no assistant tokens"):
        builder.build(messages, max_length=5)


def test_the_collator_pads_without_untraining_end_of_turn_tokens(tokenizer, builder):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap: pad id == end-of-turn id
    examples = [builder.build(CASES["default system prompt"]), builder.build(CASES["system and two turns"])]
    batch = Collator(tokenizer.pad_token_id)([e.model_dump() for e in examples])
    short = len(examples[0].input_ids)
    assert batch["input_ids"].shape[1] == len(examples[1].input_ids)
    assert batch["labels"][0, short:].eq(IGNORE).all() and batch["attention_mask"][0, short:].eq(0).all()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    trained_ends = [(row.tolist().count(end)) for row in batch["labels"]]
    assert trained_ends == [1, 2]  # each reply's end-of-turn is still trained


def test_a_named_conv_template_trains_each_reply_through_its_separator(tokenizer):
    """--conv-template NAME (FastChat's names): the masks follow that template's rendering."""
    from parley.errors import ParleyError
    from parley.train.sft import resolve_chat_template

    messages = CASES["system and two turns"]
    built = {}
    for name, trained in (("vicuna_v1.1", [" Hello!</s>", " Goodbye.</s>"]),
                          ("chatml", ["Hello!<|im_end|>", "Goodbye.<|im_end|>"])):  # not the newline after it
        built[name] = MaskBuilder(tokenizer, chat_template=resolve_chat_template(name, tokenizer)).build(messages)
        assert trained_segments(tokenizer, built[name]) == trained, name
    assert tokenizer.decode(built["vicuna_v1.1"].input_ids).startswith(
        "You are terse. USER: Hi ASSISTANT: Hello!</s>USER: Bye")
    with pytest.raises(ParleyError, match="neither a named template"):
        resolve_chat_template("vicuna-9", tokenizer)


def test_packed_batches_give_the_padded_batch_its_loss_and_logits(tokenizer, builder):
    """--packing: one row, positions restarting per conversation. The bundled model, loaded for training, must see
    each conversation alone: the same logits on every real token and the same loss as the padded batch.
    Attention leaking across conversations (positions not restarted, or a KV cache on) is caught."""
    import torch

    from parley.train.sft import SFTConfig, load_trainable_model, make_collator

    config = SFTConfig(data_path="x", output_dir="y")
    model = load_trainable_model(config, tokenizer.name_or_path).eval()  # as training loads it (no KV cache)
    rows = [builder.build(CASES[name]).model_dump() for name in ("default system prompt", "system and two turns",
                                                                 "code fences")]
    padded = make_collator(config, tokenizer.pad_token_id)(rows)
    packed = make_collator(config.model_copy(update={"packing": True}), tokenizer.pad_token_id)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert packed["labels"].ne(IGNORE).sum() == padded["labels"].ne(IGNORE).sum()  # no trained token lost
    with torch.no_grad():
        out_padded = model(**padded)
        out_packed = model(**packed)
        leaked = model(input_ids=packed["input_ids"], labels=packed["labels"])  # positions never restart
        cached = model(**packed, use_cache=True)  # transformers' default: with a KV cache, packing is not honoured
    starts = [sum(lengths[:i]) for i in range(len(rows))]
    for row, (start, n) in enumerate(zip(starts, lengths)):
        torch.testing.assert_close(out_packed.logits[0, start:start + n], out_padded.logits[row, :n], atol=2e-4, rtol=1e-4)
    assert abs(out_packed.loss.item() - out_padded.loss.item()) < 1e-4
    assert abs(leaked.loss.item() - out_padded.loss.item()) > 1e-2
    assert abs(cached.loss.item() - out_padded.loss.item()) > 1e-2


def test_conversations_load_in_both_formats_and_malformed_ones_are_reported(tmp_path):
    records = [
        {"id": "sharegpt", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "openai", "messages": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
        {"id": "order", "conversations": [{"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Hi"}]},
        {"id": "empty", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},
        {"id": "role", "messages": [{"role": "robot", "content": "Hi"}]},
        {"id": "unanswered", "messages": [{"role": "user", "content": "Hi"}]},
        {"id": "trailing", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                                        {"role": "user", "content": "And?"}]},
        {"id": "neither"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    samples, skipped = load_conversations(path)
    assert [s.id for s in samples] == ["sharegpt", "openai", "trailing"]
    assert samples[0].messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert samples[2].messages[-1]["role"] == "assistant"  # the unanswered last question is not kept
    reasons = {s.id: s.reason for s in skipped}
    assert set(reasons) == {"order", "empty", "role", "unanswered", "neither"}
    assert "out of order" in reasons["order"] and "empty assistant" in reasons["empty"] and "robot" in reasons["role"]
    as_list = tmp_path / "data.json"
    as_list.write_text(json.dumps(records))
    assert [s.id for s in load_conversations(as_list)[0]] == ["sharegpt", "openai", "trailing"]


@pytest.mark.skipif(not (SHARED_DATA / "sft" / "dummy_conversation.json").is_file(), reason="../shared/data is absent")
def test_the_sample_training_conversations_all_build(tokenizer, builder):
    samples, skipped = load_conversations(SHARED_DATA / "sft" / "dummy_conversation.json")
    assert len(samples) + len(skipped) == 500
    for sample in samples[:50]:
        assert_golden(tokenizer, builder.build(sample.messages), sample.messages)
