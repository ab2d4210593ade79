"""Log-likelihoods for evaluation through the real HTTP API: `/v1/completions` with `echo` and `logprobs` returns the
prompt tokens' log-probabilities (the first null, as OpenAI did), `max_tokens` may be 0, prompts may be token ids,
and vLLM's tokenizer endpoints answer. Both local engines serve the bundled model (SmolLM2-135M-Instruct); their
log-probabilities are checked against transformers' own forward pass over the same converted model: equal to float32
rounding on the transformers engine (measured max |difference| 2.2e-5 nats on these prompts; asserted within 2e-4),
close on llama.cpp, which computes in F16 (measured up to 0.011 nats; asserted within 0.03)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from tests.servers import models_at, start_api, start_controller, start_worker

KEY = "sk-parley-loglikelihood"
HF, GGUF = "smollm2-hf", "smollm2-gguf"
TOLERANCE = {HF: 2e-4, GGUF: 0.03}  # nats; float32 rounding and left padding on transformers, F16 on llama.cpp
TEXTS = ["The capital of France is Paris.", "Question: What do bees make?\nAnswer: honey"]
# Prompts that share a long prefix (llama.cpp reuses such prefixes' cells; a prompt whose every position is scored
# must not), and one that starts with a special token.
SHARED = "Question: Which of these is a fruit, and which one grows on trees in an orchard?\nAnswer:"
ID_TEXTS = [SHARED + " an apple", SHARED + " a carrot", "<|im_start|>user\nHi<|im_end|>"]


@pytest.fixture(scope="module")
def stack():
    controller = start_controller()
    servers = [controller]
    try:
        workers = {HF: start_worker(controller, "--engine", "transformers", names=HF, wait=False),
                   GGUF: start_worker(controller, names=GGUF, wait=False)}  # the bundled GGUF: llama.cpp
        servers += workers.values()
        for name, worker in workers.items():  # both load at once
            worker.wait_until(lambda name=name: name in models_at(controller), f"registration of {name}", timeout=180)
        api = start_api(controller, "--api-keys", KEY)
        servers.append(api)
        yield api
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        yield client


class Reference:
    """transformers' own model and tokenizer over the converted bundled model, in float32; every prompt of this
    module is computed once, up front, before the servers are busy."""

    def __init__(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from parley.models.bundled import bundled_gguf_path
        from parley.models.gguf_cache import ensure_converted

        directory = ensure_converted(bundled_gguf_path())
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self._rows = {}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # on a shared machine, torch's thread team waits on whichever thread is descheduled
        try:
            for text in TEXTS + ID_TEXTS:
                ids = self.encode(text)
                with torch.inference_mode():
                    self._rows[tuple(ids)] = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)
        finally:
            torch.set_num_threads(threads)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def log_softmax(self, ids: list[int]) -> torch.Tensor:
        """[len(ids), vocab]: row i is the distribution of the token after ids[: i + 1]."""
        return self._rows[tuple(ids)]

    def expected(self, ids: list[int]) -> np.ndarray:
        """The log-probability of each prompt token after the first."""
        return self.log_softmax(ids)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference()


def complete(http: httpx.Client, **body) -> dict:
    response = http.post("/v1/completions", json={"temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("model", [HF, GGUF])
def test_echo_with_max_tokens_0_returns_the_prompts_logprobs(reference, http, model):
    reply = complete(http, model=model, prompt=TEXTS, echo=True, logprobs=2, max_tokens=0)
    assert reply["usage"] == {"prompt_tokens": sum(len(reference.encode(t)) for t in TEXTS), "completion_tokens": 0,
                              "total_tokens": sum(len(reference.encode(t)) for t in TEXTS)}
    for choice, text in zip(reply["choices"], TEXTS):
        ids, lp = reference.encode(text), choice["logprobs"]
        assert choice["text"] == text and choice["finish_reason"] == "length"
        assert "".join(lp["tokens"]) == text and len(lp["tokens"]) == len(ids)
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # nothing precedes the first token
        assert lp["text_offset"] == [len("".join(lp["tokens"][:i])) for i in range(len(ids))]
        ours = np.array(lp["token_logprobs"][1:])
        np.testing.assert_allclose(ours, reference.expected(ids), rtol=0, atol=TOLERANCE[model])
        logp = reference.log_softmax(ids)
        for i, top in enumerate(lp["top_logprobs"][1:]):  # the 2 likeliest at each place, as transformers ranks them
            assert len(top) == 2
            best = logp[i].topk(2)
            assert list(top.values()) == pytest.approx(best.values.tolist(), abs=TOLERANCE[model])
            assert max(top.values()) >= lp["token_logprobs"][i + 1]
    plain = complete(http, model=model, prompt=TEXTS[0], max_tokens=0)  # nothing asked: nothing computed
    assert plain["choices"][0]["text"] == "" and plain["choices"][0]["finish_reason"] == "length"
    assert plain["usage"]["completion_tokens"] == 0


@pytest.mark.parametrize("model", [HF, GGUF])
def test_token_id_prompts_are_taken_as_given_and_scored_with_one_generated_token(reference, http, model):
    prompts = [reference.encode(t) for t in ID_TEXTS]
    tokenizer = reference.tokenizer
    first = complete(http, model=model, prompt=prompts, echo=True, logprobs=1, max_tokens=1)
    again = complete(http, model=model, prompt=prompts[:1], echo=True, logprobs=1, max_tokens=1)  # its cells cached now
    assert first["usage"]["prompt_tokens"] == sum(map(len, prompts)) and first["usage"]["completion_tokens"] == 3
    for choice, ids in zip(first["choices"], prompts):
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(ids) + 1  # one per given id (no BOS added), then the generated token's
        assert lp["tokens"][:-1] == [tokenizer.decode([t]) for t in ids]
        assert choice["text"].startswith(tokenizer.decode(ids))  # the echo is the ids' text, special tokens included
        np.testing.assert_allclose(lp["token_logprobs"][1:-1], reference.expected(ids), rtol=0, atol=TOLERANCE[model])
        greedy = reference.log_softmax(ids)[-1].max().item()  # temperature 0: the likeliest next token
        assert lp["token_logprobs"][-1] == pytest.approx(greedy, abs=TOLERANCE[model])
        assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())  # what lm-eval's is_greedy compares
    np.testing.assert_allclose(again["choices"][0]["logprobs"]["token_logprobs"][1:],
                               first["choices"][0]["logprobs"]["token_logprobs"][1:], rtol=0, atol=TOLERANCE[model])


@pytest.mark.parametrize("model", [HF, GGUF])
def test_token_ids_outside_the_vocabulary_are_a_400(http, model):
    for prompt in ([1, 2, 49152], [[5, 6], [10**9]]):
        response = http.post("/v1/completions", json={"model": model, "prompt": prompt, "echo": True, "logprobs": 1,
                                                      "max_tokens": 0})
        assert response.status_code == 400
        assert "vocabulary" in response.json()["error"]["message"]
    negative = http.post("/v1/completions", json={"model": model, "prompt": [1, -2], "max_tokens": 0})
    assert negative.status_code == 400 and negative.json()["error"]["param"].startswith("prompt")
    empty = http.post("/v1/completions", json={"model": model, "prompt": [[1, 2], []], "max_tokens": 0})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]


def test_streamed_echo_with_logprobs_matches_the_whole_reply(http):
    body = {"model": GGUF, "prompt": TEXTS[1], "echo": True, "logprobs": 1, "max_tokens": 3, "temperature": 0}
    whole = complete(http, **body)["choices"][0]
    events = []
    with http.stream("POST", "/v1/completions", json=body | {"stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.extend(e for e in httpx.Response(200, content=line[6:]).json()["choices"])
    assert "".join(e["text"] for e in events) == whole["text"] and whole["text"].startswith(TEXTS[1])
    streamed = [e["logprobs"] for e in events if e["logprobs"]]
    assert streamed[0]["token_logprobs"][0] is None and streamed[0]["top_logprobs"][0] is None
    for key in ("tokens", "text_offset"):
        assert [x for lp in streamed for x in lp[key]] == whole["logprobs"][key]
    assert [x for lp in streamed for x in lp["token_logprobs"]][1:] == pytest.approx(
        whole["logprobs"]["token_logprobs"][1:], abs=1e-4)
    assert events[-1]["finish_reason"] == whole["finish_reason"]


@pytest.mark.parametrize("model", [HF, GGUF])
def test_tokenizer_endpoints_answer_with_the_models_own_tokenizer(reference, http, model):
    text = "Hello world, <|im_end|> and más."
    ids = reference.encode(text)
    tokens = http.post("/tokenize", json={"model": model, "prompt": text, "add_special_tokens": False})
    assert tokens.json() == {"tokens": ids, "count": len(ids), "max_model_len": tokens.json()["max_model_len"]}
    assert tokens.json()["max_model_len"] >= 2048
    assert http.post("/detokenize", json={"model": model, "tokens": ids}).json() == {"prompt": text}
    bad = http.post("/detokenize", json={"model": model, "tokens": [1, 10**6]})
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
    info = http.get("/tokenizer_info", params={"model": model}).json()
    assert info["eos_token"] == "<|im_end|>" and "<|im_start|>" in info["chat_template"]
    assert set(info) >= {"bos_token", "pad_token", "model_max_length"}


def test_tokenizer_endpoints_need_the_key_and_a_model_when_several_are_served(stack, http):
    assert httpx.post(stack.url + "/tokenize", json={"prompt": "hi"}).status_code == 401
    several = http.post("/tokenize", json={"prompt": "hi", "add_special_tokens": False})
    assert several.status_code == 400
    assert HF in several.json()["error"]["message"] and GGUF in several.json()["error"]["message"]
    assert http.get("/tokenizer_info").status_code == 400
    assert http.post("/tokenize", json={"model": "no-such-model", "prompt": "hi"}).status_code == 404


@pytest.mark.parametrize("model", [HF, GGUF])
def test_a_one_token_prompt_has_only_its_null_entry(http, model):
    """Nothing comes before the first token: a one-token prompt's only entry is null (alone, and batched with a
    longer prompt, whose entries are unaffected)."""
    alone = complete(http, model=model, prompt=[[504]], echo=True, logprobs=1, max_tokens=0)
    assert alone["choices"][0]["logprobs"]["token_logprobs"] == [None]
    batched = complete(http, model=model, prompt=[[504], [504, 3313, 314]], echo=True, logprobs=1, max_tokens=0)
    assert [len(c["logprobs"]["token_logprobs"]) for c in batched["choices"]] == [1, 3]
    assert batched["choices"][0]["logprobs"]["token_logprobs"] == [None]
