"""The transformers engine on the real bundled model: answers, sampling, stops, batching."""

from __future__ import annotations

import asyncio

import pytest
import torch
from pydantic import ValidationError

from parley.engines.base import GenerationRequest, SamplingParams
from parley.errors import ContextLengthError, InvalidRequestError

FRANCE = "What is the capital of France?"


async def collect(engine, request):
    chunks = [c async for c in engine.generate_stream(request)]
    return chunks


async def test_greedy_answer_names_paris(engine, chat_request):
    result = await engine.generate(chat_request(FRANCE, temperature=0, max_new_tokens=40))
    assert "Paris" in result.text
    assert result.finish_reason == "stop"  # the model ended its turn itself


async def test_min_p_one_keeps_only_the_likeliest_token_and_a_small_min_p_still_samples(engine, chat_request):
    """min_p drops the tokens less likely than min_p × the likeliest one's probability: at 1 only the likeliest is
    left, so sampling at temperature 1 gives the greedy reply whatever the seed."""
    greedy = await engine.generate(chat_request(FRANCE, temperature=0, max_new_tokens=30))
    for seed in (1, 2):
        pinned = await engine.generate(chat_request(FRANCE, temperature=1.0, min_p=1.0, seed=seed, max_new_tokens=30))
        assert pinned.token_ids == greedy.token_ids
    free = [await engine.generate(chat_request(FRANCE, temperature=1.5, min_p=0.01, seed=s, max_new_tokens=30))
            for s in (1, 2, 3)]
    assert any(r.token_ids != greedy.token_ids for r in free)


async def test_greedy_tokens_equal_transformers_generate(engine, chat_request):
    """The engine's own decoding loop against transformers' reference `generate`."""
    for question in ("Name three fruits.", "Explain what a compiler does."):
        request = chat_request(question, temperature=0, max_new_tokens=40)
        ours = await engine.generate(request)
        ids = engine.tokenizer(request.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            reference = engine.model.generate(ids, max_new_tokens=40, do_sample=False)
        assert ours.token_ids == reference[0, ids.shape[1]:].tolist()  # EOS included on both sides


async def test_streamed_and_whole_outputs_are_identical(engine, chat_request):
    request = chat_request("Write a haiku about the sea.", temperature=0, max_new_tokens=48)
    chunks = await collect(engine, request)
    whole = await engine.generate(request.model_copy(update={"request_id": "again"}))
    assert len(chunks) > 3  # it did stream
    assert "".join(c.text for c in chunks) == whole.text
    assert [t for c in chunks for t in c.token_ids] == whole.token_ids
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == whole.finish_reason and chunks[-1].usage == whole.usage


async def test_same_seed_same_sample_and_other_seed_differs(engine, chat_request):
    def req(seed):
        return chat_request("Tell me a one-line joke.", temperature=1.0, top_p=0.95, max_new_tokens=32, seed=seed)

    a, b, c = await asyncio.gather(engine.generate(req(7)), engine.generate(req(7)), engine.generate(req(8)))
    assert a.text == b.text
    assert a.text != c.text


async def test_max_new_tokens_is_exact_with_finish_length(engine, chat_request):
    result = await engine.generate(chat_request("Tell me a long story about a dragon.", temperature=0, max_new_tokens=9))
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 9 == len(result.token_ids)


async def test_prompt_token_count_is_exact(engine, chat_request):
    request = chat_request(FRANCE, temperature=0, max_new_tokens=2)
    result = await engine.generate(request)
    expected = len(engine.tokenizer(request.prompt, add_special_tokens=False)["input_ids"])
    assert result.usage.prompt_tokens == expected
    assert await engine.count_tokens(request.prompt, add_special_tokens=False) == expected


async def test_stop_string_ends_text_before_it_and_never_leaks(engine, chat_request):
    plain = await engine.generate(chat_request(FRANCE, temperature=0, max_new_tokens=40))
    assert "Paris" in plain.text
    chunks = await collect(engine, chat_request(FRANCE, temperature=0, max_new_tokens=40, stop=["Paris"]))
    text = "".join(c.text for c in chunks)
    assert text == plain.text[: plain.text.index("Paris")]
    assert chunks[-1].finish_reason == "stop"
    # no chunk ever showed the beginning of the stop string ("P", "Par"...) that was later cut
    shown = ""
    for c in chunks:
        shown += c.text
        assert plain.text.startswith(shown) and len(shown) <= len(text)


async def test_stop_token_id_ends_generation(engine, chat_request):
    plain = await engine.generate(chat_request(FRANCE, temperature=0, max_new_tokens=40))
    third = plain.token_ids[2]
    cut = await engine.generate(chat_request(FRANCE, temperature=0, max_new_tokens=40, stop_token_ids=[third]))
    assert cut.finish_reason == "stop"
    assert cut.token_ids == plain.token_ids[:3]
    assert cut.text == engine.tokenizer.decode(plain.token_ids[:2], skip_special_tokens=True)


async def test_deltas_never_split_a_utf8_character(engine):
    # A raw completion prompt that the model continues in Japanese: many of its tokens are
    # fragments of a character's UTF-8 bytes.
    request = GenerationRequest(prompt="日本語の文章: 猫が好きです。犬も",
                                params=SamplingParams(temperature=0, max_new_tokens=30, ignore_eos=True))
    chunks = await collect(engine, request)
    ids = [t for c in chunks for t in c.token_ids]
    multi_byte = [t for t in ids if "\ufffd" in engine.tokenizer.decode([t])]
    assert multi_byte, "the reply should contain tokens that are partial characters"
    assert not any("\ufffd" in c.text for c in chunks)
    assert "".join(c.text for c in chunks) == engine.tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.slow  # 15-50 s each: kept out of `make test` for its time budget; `make test-slow` (CI) runs it
async def test_sixteen_concurrent_requests_share_batches_and_keep_their_answers(engine, chat_request):
    """Different lengths and parameters, submitted together and staggered; greedy ones must match solo runs."""
    topics = ["cats", "the moon", "bread", "rivers", "robots", "winter", "music", "trees"]
    greedy = [chat_request(f"Write two sentences about {t}.", temperature=0, max_new_tokens=16 + 4 * i)
              for i, t in enumerate(topics)]
    sampled = [chat_request(f"Say something about {t}.", temperature=0.9, top_k=40, top_p=0.9,
                            repetition_penalty=1.1, seed=i, max_new_tokens=12 + 6 * i, stop=["\n\n"])
               for i, t in enumerate(topics)]
    alone = [await engine.generate(r) for r in greedy]
    alone_sampled = await engine.generate(sampled[3])
    before = engine.stats()

    async def staggered(i, r):
        await asyncio.sleep(0.05 * (i % 4))  # some arrive while others are decoding
        return await engine.generate(r)

    results = await asyncio.gather(*(staggered(i, r) for i, r in enumerate(greedy + sampled)))
    after = engine.stats()

    assert after.max_batch_size_seen >= 8
    steps = after.decode_steps - before.decode_steps
    tokens = after.decode_tokens - before.decode_tokens
    assert tokens / steps > 4, f"mean batch {tokens / steps:.1f}: requests were not decoded together"
    assert after.joined_running_batch > before.joined_running_batch
    # Batched float arithmetic can legitimately differ from solo runs in the last bits; on this model
    # and these prompts it does not change a single greedy token, so the whole texts are compared.
    for solo, batched in zip(alone, results[:8]):
        assert batched.token_ids == solo.token_ids
        assert batched.finish_reason == solo.finish_reason
    assert results[8 + 3].text == alone_sampled.text  # a seeded sample is also independent of batch-mates
    for r, req in zip(results, greedy + sampled):
        assert r.usage.completion_tokens <= req.params.max_new_tokens


async def test_closing_a_stream_frees_its_batch_row(engine, chat_request):
    stream = engine.generate_stream(chat_request("Tell me a long story.", temperature=0, max_new_tokens=400, ignore_eos=True))
    got = [await stream.__anext__() for _ in range(3)]
    assert got
    await stream.aclose()
    for _ in range(50):
        if engine.stats().running == 0:
            break
        await asyncio.sleep(0.1)
    assert engine.stats().running == 0


async def test_prompt_longer_than_context_window_is_refused(engine):
    n = engine.model_info.context_length
    request = GenerationRequest(prompt="hello " * (n + 10), params=SamplingParams(max_new_tokens=5))
    with pytest.raises(ContextLengthError, match=f"context window is {n} tokens"):
        await engine.generate(request)


@pytest.mark.slow  # 15-50 s each: kept out of `make test` for its time budget; `make test-slow` (CI) runs it
async def test_prompt_near_context_window_is_capped_to_the_room_left(engine):
    n = engine.model_info.context_length
    ids = engine.tokenizer("hello " * n, add_special_tokens=False)["input_ids"][: n - 3]
    result = await engine.generate(GenerationRequest(prompt_token_ids=ids, params=SamplingParams(max_new_tokens=50, ignore_eos=True)))
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 3


async def test_prompt_token_ids_outside_the_vocabulary_are_refused_and_the_engine_goes_on(engine, chat_request):
    bad = GenerationRequest(prompt_token_ids=[1, 2, 10**6], params=SamplingParams(max_new_tokens=3))
    with pytest.raises(InvalidRequestError, match=r"vocabulary \(0 to 49151\)"):
        await asyncio.wait_for(engine.generate(bad), timeout=10)
    result = await asyncio.wait_for(engine.generate(chat_request(FRANCE, temperature=0, max_new_tokens=40)), timeout=60)
    assert "Paris" in result.text


@pytest.mark.parametrize("bad", [{"prompt": ""}, {}, {"prompt": "a", "prompt_token_ids": [1]}])
def test_empty_or_ambiguous_prompt_is_refused(bad):
    with pytest.raises(ValidationError):
        GenerationRequest(**bad)


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 1.5}, {"max_new_tokens": -1}, {"min_p": 1.5},
                                 {"stop": ["x"] * 65}])
def test_bad_sampling_parameters_are_refused(bad):
    with pytest.raises(ValidationError):
        SamplingParams(**bad)


async def test_embeddings_are_normalized_and_meaningful(engine):
    texts = ["The cat sat on the mat.", "A cat was sitting on the rug.", "Quarterly tax filings are due in April."]
    result = await engine.embed(texts)
    vectors = torch.tensor(result.embeddings)
    assert vectors.shape == (3, engine.model.config.hidden_size)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated
    assert result.prompt_tokens == sum(len(engine.tokenizer(t)["input_ids"]) for t in texts)


def test_model_info_describes_the_bundled_model(engine):
    info = engine.model_info
    assert info.name == "smollm2-135m-instruct"
    assert info.context_length == 8192
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert 130e6 < info.num_parameters < 140e6
