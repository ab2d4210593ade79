"""Continuing a reply cut at its token limit (`continue_final_message`, as vLLM calls it): the prompt ends inside
the assistant's message, so the model goes on with it instead of starting over. On the real bundled model."""

from __future__ import annotations

import pytest

from parley.conversation.formatter import ChatFormatter
from parley.engines.base import GenerationRequest, Message, SamplingParams
from parley.errors import InvalidRequestError

QUESTION = [Message(role="user", content="Count from one to twenty in words, separated by commas.")]


def greedy(tokens: int, messages: list[Message], cont: bool = False) -> GenerationRequest:
    return GenerationRequest(messages=messages, continue_final_message=cont,
                             params=SamplingParams(temperature=0, max_new_tokens=tokens))


@pytest.fixture(params=["transformers", "llamacpp"])
async def either_engine(request, engine):
    if request.param == "transformers":
        yield engine
        return
    from parley.engines.engine_options import LlamaCppOptions
    from parley.engines.llamacpp import LlamaCppEngine
    from parley.models.bundled import bundled_gguf_path

    llama = LlamaCppEngine(str(bundled_gguf_path()), "smollm2", LlamaCppOptions(prefix_cache_entries=0))
    yield llama
    await llama.aclose()


async def test_a_continued_reply_goes_on_where_it_was_cut(either_engine):
    engine = either_engine
    whole = await engine.generate(greedy(40, QUESTION))
    cut = await engine.generate(greedy(12, QUESTION))
    assert cut.finish_reason == "length" and whole.text.startswith(cut.text)
    rest = await engine.generate(greedy(28, [*QUESTION, Message(role="assistant", content=cut.text)], cont=True))
    # the continuation is the rest of the same answer, not a new answer from its start
    assert not rest.text.lstrip().startswith(cut.text.strip()[:10])
    joined = cut.text + rest.text
    assert joined[: len(cut.text) + 12] == whole.text[: len(cut.text) + 12], (cut.text, rest.text, whole.text)


def test_the_prompt_ends_inside_the_assistant_message(formatter: ChatFormatter):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can"}]
    continued = formatter.render(messages, continue_final=True).text
    assert continued.endswith("Hello, how can")
    assert formatter.render(messages, add_generation_prompt=False).text.startswith(continued)
    with pytest.raises(InvalidRequestError):
        formatter.render([{"role": "user", "content": "Hi"}], continue_final=True)


def test_the_request_must_end_with_the_assistant_message():
    with pytest.raises(ValueError, match="end with the assistant"):
        greedy(8, QUESTION, cont=True)
