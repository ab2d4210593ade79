"""Named templates render exactly as FastChat's templates of the same name."""

from __future__ import annotations

import pytest

from parley.conversation.formatter import ChatFormatter, validate_messages
from parley.conversation.matching import NAME_RULES, template_for_model_name
from parley.conversation.templates import NAMED_TEMPLATES, standalone_chat_template
from parley.errors import InvalidRequestError, ParleyError
from tests.conftest import import_or_skip

fastchat_conversation = import_or_skip("fastchat.conversation", "the templates are compared with FastChat's")

CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "What is the capital of France?"}],
    "system and two turns": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there."},
        {"role": "user", "content": "Write `print(1)` in a code block:\n```python\n```"},
    ],
    "unicode, spacing, newlines": [
        {"role": "user", "content": "  Ça va? 日本語\r\n\n\nmore  "},
        {"role": "assistant", "content": "Très bien 🙂\n\nsecond paragraph"},
        {"role": "user", "content": "</s> literal special text <|im_end|>"},
    ],
}


def fastchat_prompt(name: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """What FastChat's own API server builds for these OpenAI-style messages."""
    conv = fastchat_conversation.get_conv_template(name)
    for m in messages:
        if m["role"] == "system":
            conv.set_system_message(m["content"])
        else:
            conv.append_message(conv.roles[0] if m["role"] == "user" else conv.roles[1], m["content"])
    if add_generation_prompt:
        conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


SHARED = sorted(set(NAMED_TEMPLATES) & set(fastchat_conversation.conv_templates))


def test_the_required_templates_exist():
    required = {"raw", "one_shot", "vicuna_v1.1", "alpaca", "llama-2", "llama-3", "chatml", "mistral",
                "zephyr", "gemma", "chatglm3", "dolly_v2", "falcon"}
    assert required <= set(NAMED_TEMPLATES)
    # fschat 0.2.36 (the last PyPI release) predates llama-3, chatml and gemma: those are
    # compared with FastChat's later code in test_templates_newer_than_fschat_release below.
    assert {"raw", "one_shot", "vicuna_v1.1", "alpaca", "llama-2", "mistral", "zephyr", "chatglm3",
            "dolly_v2", "falcon"} <= set(SHARED)


@pytest.mark.parametrize("name", SHARED)
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_rendering_equals_fastchat(name, conversation):
    messages = CONVERSATIONS[conversation]
    ours = ChatFormatter.named_template(name).render(messages).text
    assert ours == fastchat_prompt(name, messages, add_generation_prompt=True)


@pytest.mark.parametrize("name", SHARED)
def test_complete_conversation_equals_fastchat(name):
    messages = CONVERSATIONS["system and two turns"][:3]  # ends with the assistant's reply
    ours = ChatFormatter.named_template(name).render(messages, add_generation_prompt=False).text
    assert ours == fastchat_prompt(name, messages, add_generation_prompt=False)


@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_a_named_template_written_out_as_a_chat_template_renders_the_same(name):
    """What `parley train sft --conv-template NAME` saves in the trained model's tokenizer: served as its own
    template, it must give the prompts the named template gives (with and without the generation prompt)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    standalone = standalone_chat_template(NAMED_TEMPLATES[name])
    for conversation in CONVERSATIONS.values():
        for messages, prompt in ((conversation, True), (conversation[:3], False)):
            ours = ChatFormatter.named_template(name).render(messages, add_generation_prompt=prompt).text
            written = render_jinja_template(conversations=[messages], chat_template=standalone,
                                            add_generation_prompt=prompt)[0][0]
            assert written == ours
    with_bos = standalone_chat_template(NAMED_TEMPLATES[name], bos_token=True)  # for tokenizers that add BOS
    one = CONVERSATIONS["one turn"]
    assert render_jinja_template(conversations=[one], chat_template=with_bos, add_generation_prompt=True,
                                 bos_token="<s>")[0][0] == "<s>" + ChatFormatter.named_template(name).render(one).text


def test_a_model_carrying_a_written_named_template_is_served_with_its_stop_rules():
    """A model fine-tuned with --conv-template one_shot carries the written-out template; serving it takes the
    named template back, with the stop string '###' that a plain chat template cannot express."""
    from parley.engines.base import ModelInfo

    info = ModelInfo(name="my-sft", engine="transformers", context_length=2048,
                     chat_template=standalone_chat_template(NAMED_TEMPLATES["one_shot"]))
    formatter = ChatFormatter.for_model(info)
    assert formatter.name == "one_shot" and formatter.render(CONVERSATIONS["one turn"]).stop == ["###"]
    plain = ModelInfo(name="my-sft", engine="transformers", context_length=2048, chat_template="{{ messages }}")
    assert ChatFormatter.for_model(plain).name == "model"


@pytest.mark.parametrize("name", SHARED)
def test_stop_conditions_equal_fastchat(name):
    conv = fastchat_conversation.get_conv_template(name)
    t = NAMED_TEMPLATES[name]
    stop = conv.stop_str if isinstance(conv.stop_str, list) else ([conv.stop_str] if conv.stop_str else [])
    assert list(t.stop) == stop
    assert list(t.stop_token_ids) == list(conv.stop_token_ids or [])


# Renderings by FastChat's main-branch code (fastchat/conversation.py, LLAMA3, CHATML and
# GEMMA separator styles), which no PyPI release of fschat contains.
NEWER = {
    "llama-3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi there.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWrite `print(1)` in a code block:\n```python\n```<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "chatml": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi there.<|im_end|>\n"
        "<|im_start|>user\nWrite `print(1)` in a code block:\n```python\n```<|im_end|>\n<|im_start|>assistant\n"
    ),
    "gemma": (
        "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\nHi there.<end_of_turn>\n"
        "<start_of_turn>user\nWrite `print(1)` in a code block:\n```python\n```<end_of_turn>\n<start_of_turn>model\n"
    ),
}


@pytest.mark.parametrize("name", sorted(NEWER))
def test_templates_newer_than_fschat_release(name):
    assert ChatFormatter.named_template(name).render(CONVERSATIONS["system and two turns"]).text == NEWER[name]


@pytest.mark.parametrize(
    ("model_name", "template"),
    [
        ("lmsys/vicuna-13b-v1.5", "vicuna_v1.1"),
        ("HuggingFaceH4/zephyr-7b-beta", "zephyr"),  # a Mistral fine-tune, but zephyr's format
        ("teknium/OpenHermes-2.5-Mistral-7B", "chatml"),  # ditto, ChatML
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3"),
        ("meta-llama/Llama-2-7b-chat-hf", "llama-2"),
        ("codellama/CodeLlama-7b-Instruct-hf", "llama-2"),
        ("google/gemma-7b-it", "gemma"),
        ("THUDM/chatglm3-6b", "chatglm3"),
        ("databricks/dolly-v2-12b", "dolly_v2"),
        ("tiiuae/falcon-7b-instruct", "falcon"),
        ("vicuna-7b-llama-2-based", "vicuna_v1.1"),  # ambiguous: the earlier rule wins
        ("totally-unknown-model", None),
    ],
)
def test_model_name_rules_pick_templates_in_order(model_name, template):
    assert template_for_model_name(model_name) == template


def test_every_rule_names_a_real_template():
    assert {name for _, name in NAME_RULES} <= set(NAMED_TEMPLATES)


def test_unknown_template_name_is_a_clear_error():
    with pytest.raises(ParleyError, match="unknown chat template 'nope'.*vicuna_v1.1"):
        ChatFormatter.named_template("nope")


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "no messages"),
        ([{"role": "user", "content": "   "}], "empty"),
        ([{"role": "assistant", "content": "hi"}], "alternate"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message may only come first"),
        ([{"role": "wizard", "content": "a"}], "invalid messages"),
    ],
)
def test_bad_conversations_are_refused(messages, match):
    with pytest.raises(InvalidRequestError, match=match):
        validate_messages(messages)
