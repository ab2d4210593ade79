"""The reasoning splitter on its own: a reply's text, in pieces of every size, read as reasoning and answer, with
nothing lost or doubled wherever the pieces split the markers."""

from __future__ import annotations

import pytest

from parley.conversation.reasoning import (
    ReasoningSplitter,
    open_block,
    parser_name,
    starts_inside,
)


def split(text: str, size: int, inside: bool = False) -> tuple[str, str]:
    splitter = ReasoningSplitter(inside)
    reasoning = content = ""
    for i in range(0, len(text), size):
        piece = splitter.feed(text[i:i + size])
        reasoning, content = reasoning + piece.reasoning, content + piece.content
    rest = splitter.finish()
    return reasoning + rest.reasoning, content + rest.content


CASES = [  # (text, the reply starts inside the block, reasoning, answer)
    ("<think>\nTwo and two.\n</think>\n\nFour.", False, "Two and two.\n", "Four."),
    ("  <think>x</think>y", False, "x", "y"),
    ("<think></think>Answer", False, "", "Answer"),
    ("Plain answer <think> not reasoning </think>", False, "", "Plain answer <think> not reasoning </think>"),
    ("a<</think>b", True, "a<", "b"),
    ("Still thinking when it was cut", True, "Still thinking when it was cut", ""),
    ("Cut inside the marker </thi", True, "Cut inside the marker </thi", ""),
    ("<thinkX>no</think>", False, "", "<thinkX>no</think>"),
    ("<thi", False, "", "<thi"),
    ("\n\nthought</think>\n\nanswer <think> stays", True, "thought", "answer <think> stays"),
]


@pytest.mark.parametrize("text, inside, reasoning, answer", CASES)
def test_every_piece_size_gives_the_same_split(text, inside, reasoning, answer):
    for size in range(1, len(text) + 1):
        assert split(text, size, inside) == (reasoning, answer), f"pieces of {size}"


def test_a_split_marker_is_held_back_until_it_is_known():
    splitter = ReasoningSplitter(inside=True)
    assert splitter.feed("Let me think</th").reasoning == "Let me think"  # "</th" could still be the marker
    piece = splitter.feed("ink>Yes")
    assert (piece.reasoning, piece.content) == ("", "Yes")


def test_which_parser_and_where_the_reply_starts():
    assert parser_name(None, "{{ '<think>' }}", "my-model") == "think"
    assert parser_name(None, None, "DeepSeek-R1-Distill-Qwen-7B") == "think"
    assert parser_name(None, None, "smollm2-135m-instruct") == "none"
    assert parser_name("none", "{{ '<think>' }}", "qwq") == "none"
    with pytest.raises(ValueError, match="unknown reasoning parser"):
        parser_name("harmony", None, None)
    assert starts_inside("<|im_start|>assistant\n<think>\n") and not starts_inside("<think>\n\n</think>\n\n")
    assert open_block("<think>half a thought") and not open_block("<think>done</think> answer")
