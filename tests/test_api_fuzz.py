"""Fuzzing the OpenAI-compatible API from its own OpenAPI schema (schemathesis), on the echo engine.

The properties, for every request: no 5xx (nor a `server_error` event inside a 200 stream), no
hang (each call has a timeout), every error body in OpenAI's shape
`{"error": {"message": str, "type": str, "param": ..., "code": ...}}`, and schemathesis's own
conformance checks: each response's status code, content type, headers and body are what the
OpenAPI document says for that route (the typed response models and the error statuses each route
declares), and a request the schema calls invalid is refused.

One of schemathesis's checks is left to triage (PARLEY_FUZZ_ALL_CHECKS=1, below), not `make test`:
`positive_data_acceptance`, that every request the schema allows is accepted. The API is stricter
than JSON Schema can say, as OpenAI is: `5.0` is an integer to JSON Schema but a 400 for
`max_tokens`; messages must alternate and not be empty; OpenAI fields parley does not support yet
(`logit_bias`, token-id prompts ...) are in the schema so that sending one gets a 400 naming it.

Two parts:

* `test_fuzz`: schemathesis's coverage phase (deterministic boundary and type-mutation cases, plus
  probes with unsupported methods) and a bounded, derandomized fuzzing phase, against one stack
  (controller, an echo worker, an API with an API key). The echo engine answers from the prompt in
  milliseconds: this is a test of the serving layers, not of inference.
* `test_hostile_request`: explicit hostile requests (huge integers, fan-out, oversized bodies,
  a non-ASCII key ...), each of which must get a 4xx in OpenAI's shape within 30 s.

About 1,100 requests in all (the coverage phase's fixed set is most of them), deterministic from
run to run; summary lines (requests, statuses) are printed at the end of the module.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import os
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.failures import FailureGroup

from parley.serving.api import APISettings, create_app
from tests.servers import Server, start_api, start_controller, start_worker

KEY = "sk-parley-fuzz"
MODEL = "echo"
FUZZ_TIMEOUT_S = 10.0  # per fuzzed call: the echo engine answers in milliseconds
HOSTILE_TIMEOUT_S = 30.0  # per hostile call: slower than that is a hang
FUZZ_MAX_EXAMPLES = 40  # per operation, fuzzing phase only (the coverage phase has its own fixed set)
GENERATION_REQUESTS = ("ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "ResponsesRequest")

# With PARLEY_FUZZ_ALL_CHECKS=1 the fuzzing also runs the check `make test` leaves out (positive-data
# acceptance, see the module's docstring) and lists what it finds in the summary, without failing on it.
ALL_CHECKS_ENV = "PARLEY_FUZZ_ALL_CHECKS"
ALL_CHECKS = os.environ.get(ALL_CHECKS_ENV) == "1"
FINDINGS: collections.Counter = collections.Counter()
FINDING_EXAMPLES: dict[tuple[str, str], str] = {}

STATS: dict[str, collections.Counter] = {"fuzz": collections.Counter(), "hostile": collections.Counter()}
SLOWEST: dict[str, float] = {"fuzz": 0.0, "hostile": 0.0}


# -- the stack ----------------------------------------------------------------------------------


class Stack:
    """Controller, one echo worker, an API with an API key; restartable after a hostile request
    left it busy (a hang on the client side can keep the servers working long after)."""

    def __init__(self):
        self.servers: list[Server] = []
        self.api: Server | None = None

    def start(self) -> Stack:
        controller = start_controller()
        self.servers = [controller]
        try:
            self.servers.append(start_worker(controller, names=MODEL, echo=True))
            self.api = start_api(controller, env={"PARLEY_API_KEYS": KEY})
            self.servers.append(self.api)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return self.api.url

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop(timeout=10)
        self.servers = []

    def restart(self) -> None:
        for server in reversed(self.servers):
            server.kill()
        self.start()


def _write_summary(config: pytest.Config) -> None:
    """The summary lines, on the terminal even while output is captured (as `capsys.disabled()` does)."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        _write_summary_lines(config.pluginmanager.get_plugin("terminalreporter"))


def _write_summary_lines(reporter) -> None:
    for part, counts in STATS.items():
        total = sum(counts.values())
        if not total:
            continue
        statuses = collections.Counter()
        for (_, status), count in counts.items():
            statuses[status] += count
        line = (f"API fuzz summary [{part}]: {total} requests, statuses "
                f"{dict(sorted(statuses.items(), key=lambda kv: str(kv[0])))}, slowest {SLOWEST[part]:.2f} s")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(line)
        else:
            print(line)
        if part == "fuzz" and reporter is not None:
            by_operation: dict[str, list[str]] = collections.defaultdict(list)
            for (operation, status), count in sorted(counts.items(), key=str):
                by_operation[operation].append(f"{status}x{count}")
            for operation, parts in by_operation.items():
                reporter.write_line(f"    {operation}: {' '.join(parts)}")
    if FINDINGS and reporter is not None:
        reporter.write_line(f"schemathesis's other checks ({ALL_CHECKS_ENV}=1), failures by operation and kind:")
        for (operation, title), count in sorted(FINDINGS.items()):
            reporter.write_line(f"    {operation}: {title} x{count}; e.g. {FINDING_EXAMPLES[(operation, title)]}")


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    _write_summary(request.config)


@pytest.fixture(scope="module")
def stack():
    started = Stack().start()
    yield started
    started.stop()


# -- OpenAI's error shape ------------------------------------------------------------------------


def error_shape_problems(body: object) -> list[str]:
    """What keeps `body` from being OpenAI's error body (empty: nothing)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return [f"not {{'error': {{...}}}}: {str(body)[:200]}"]
    problems = [f"unexpected top-level key {k!r}" for k in body if k != "error"]
    error = body["error"]
    for key in ("message", "type", "param", "code"):
        if key not in error:
            problems.append(f"error.{key} is missing")
    for key in ("message", "type"):
        if key in error and not (isinstance(error[key], str) and error[key]):
            problems.append(f"error.{key} is not a non-empty string: {error[key]!r}")
    if not isinstance(error.get("param"), (str, type(None))):
        problems.append(f"error.param is neither a string nor null: {error.get('param')!r}")
    if not isinstance(error.get("code"), (str, int, type(None))):
        problems.append(f"error.code is neither a string nor null: {error.get('code')!r}")
    return problems


def sse_events(text: str) -> list[object]:
    events = []
    for line in text.splitlines():
        if line.startswith("data: ") and line[6:].strip() != "[DONE]":
            try:
                events.append(json.loads(line[6:]))
            except ValueError:
                events.append(line)
    return events


def response_problems(status: int, content_type: str, text: str) -> list[str]:
    """The properties every response must have: not a 5xx; an error in OpenAI's shape; a 200 stream
    with no server error inside."""
    problems = []
    if status >= 500:
        problems.append(f"status {status}")
    if status >= 400:
        try:
            body = json.loads(text)
        except ValueError:
            return problems + [f"error body is not JSON ({content_type}): {text[:200]!r}"]
        problems += error_shape_problems(body)
    elif "text/event-stream" in content_type:
        for event in sse_events(text):
            if isinstance(event, dict) and "error" in event:
                problems += error_shape_problems(event)
                if event["error"].get("type") == "server_error":
                    problems.append(f"a server error inside the stream: {str(event)[:300]}")
            elif not isinstance(event, dict):
                problems.append(f"a stream event that is not JSON: {str(event)[:200]!r}")
    return problems


def openai_error_shape(ctx, response, case) -> None:
    """A schemathesis check: the properties above, on a schemathesis `Response`."""
    content_type = (response.headers.get("content-type") or [""])[0]  # lowercase keys, lists of values
    problems = response_problems(response.status_code, content_type, response.text)
    problems = [p for p in problems if not p.startswith("status 5")]  # not_a_server_error reports those
    if problems:
        raise AssertionError("; ".join(problems))


def within_fuzz_timeout(ctx, response, case) -> None:
    if response.elapsed > FUZZ_TIMEOUT_S:
        raise AssertionError(f"answered in {response.elapsed:.1f} s (limit {FUZZ_TIMEOUT_S} s)")


# -- fuzzing from the schema ---------------------------------------------------------------------


def fuzzed_schema() -> dict:
    """The API's own OpenAPI schema (the one it serves at /openapi.json; `test_served_schema_is_fuzzed`
    checks that), with two changes so that generated requests reach the engine more often: `model` is
    the echo model (not "model not found"; negative mode still sends other values), and prompts and
    embedding inputs are not empty."""
    raw = copy.deepcopy(create_app(APISettings(api_keys=[KEY])).openapi())
    schemas = raw["components"]["schemas"]
    for name in GENERATION_REQUESTS:
        schemas[name]["properties"]["model"] = {"type": "string", "enum": [MODEL]}
    # The server refuses empty prompts and inputs (a 400, which the schema does not say): without
    # this, nearly every generated completion request is an empty prompt and none reaches the engine.
    for name, field in (("CompletionRequest", "prompt"), ("EmbeddingRequest", "input")):
        for option in schemas[name]["properties"][field]["anyOf"]:
            if option.get("type") == "string":
                option["minLength"] = 1
            elif option.get("items", {}).get("type") == "string":
                option["items"]["minLength"] = 1
                option["minItems"] = 1
    return raw


# schemathesis.pytest.from_fixture (a schema loaded from the live server) fails under pytest 9.2
# (`'Function' object has no attribute '_nodeid'`), so the schema comes from the app itself at
# import time, and each call goes to the live stack's URL.
schema = schemathesis.openapi.from_dict(fuzzed_schema(), config=schemathesis.Config.from_dict({
    "seed": 14,
    "generation": {"mode": "all", "deterministic": True, "database": "none"},
    "phases": {"examples": {"enabled": False}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
               "stateful": {"enabled": False}},
    "request-timeout": FUZZ_TIMEOUT_S,
}))


def test_served_schema_is_fuzzed(stack):
    served = httpx.get(stack.url + "/openapi.json", timeout=10).json()
    assert served == create_app(APISettings(api_keys=[KEY])).openapi()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= set(served["paths"])


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(max_examples=FUZZ_MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, bounded
          suppress_health_check=list(HealthCheck))
def test_fuzz(case, stack):
    response = case.call(base_url=stack.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=FUZZ_TIMEOUT_S)
    STATS["fuzz"][(case.operation.label, response.status_code)] += 1
    SLOWEST["fuzz"] = max(SLOWEST["fuzz"], response.elapsed)
    # schemathesis's built-in checks (not_a_server_error, the conformance checks ...) and ours
    case.validate_response(response, additional_checks=[openai_error_shape, within_fuzz_timeout],
                           excluded_checks=[positive_data_acceptance])
    if ALL_CHECKS:
        try:
            case.validate_response(response, checks=[positive_data_acceptance])
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (case.operation.label, failure.title)
                FINDINGS[key] += 1
                sent = case.method + " " + case.formatted_path + (
                    f" {json.dumps(case.body, default=repr)[:160]}" if isinstance(case.body, (dict, list)) else "")
                FINDING_EXAMPLES.setdefault(key, f"{sent} -> {response.status_code}: "
                                                 f"{' '.join(failure.message.split())[:240]}")


# -- hostile requests ----------------------------------------------------------------------------


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], **fields}


def deep_response_format(depth: int) -> bytes:
    """A chat request whose response_format JSON schema nests `depth` objects (as text: `json.dumps`
    itself would overflow Python's recursion limit)."""
    schema = '{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}' + '}, "required": ["a"]}' * depth
    response_format = f'{{"type": "json_schema", "json_schema": {{"name": "deep", "schema": {schema}}}}}'
    return f'{json.dumps(chat())[:-1]}, "response_format": {response_format}}}'.encode()


NON_ASCII_KEY = {"Authorization": "Bearer ключ".encode()}  # UTF-8 bytes on the wire, as curl sends them

# (id, method, path, body: a function giving the JSON body or raw bytes (built when run, not at
# collection), extra headers (None: leave that header out)
HOSTILE = [
    ("seed-beyond-64-bits", "POST", "/v1/chat/completions", lambda: chat(seed=18446744073709551616), {}),
    ("seed-minus-2**70", "POST", "/v1/chat/completions", lambda: chat(seed=-2**70), {}),
    ("n-128-times-200-prompts", "POST", "/v1/completions",
     lambda: {"model": MODEL, "prompt": [f"prompt number {i}" for i in range(200)], "n": 128}, {}),
    # Past any cap on the length of the prompt list: 16,384 choices from one request.
    ("n-128-times-128-prompts", "POST", "/v1/completions",
     lambda: {"model": MODEL, "prompt": [f"prompt number {i}" for i in range(128)], "n": 128}, {}),
    ("non-ascii-bearer-token", "GET", "/v1/models", None, NON_ASCII_KEY),
    ("non-ascii-bearer-token-chat", "POST", "/v1/chat/completions", chat, NON_ASCII_KEY),
    ("20-MB-message", "POST", "/v1/chat/completions",
     lambda: {"model": MODEL, "messages": [{"role": "user", "content": "lorem ipsum " * (20 * 2**20 // 12)}]}, {}),
    ("stop-50-strings-of-5000", "POST", "/v1/chat/completions",
     lambda: chat(stop=[f"{i:04d}" + "x" * 4996 for i in range(50)]), {}),
    ("top-logprobs-21", "POST", "/v1/chat/completions", lambda: chat(logprobs=True, top_logprobs=21), {}),
    ("embeddings-100000-inputs", "POST", "/v1/embeddings",
     lambda: {"model": MODEL, "input": [f"text {i}" for i in range(100_000)]}, {}),
    # Depth 1,000 is past Python's JSON parser (about 2,000 levels of JSON); 400 is within it.
    ("response-format-depth-1000", "POST", "/v1/chat/completions", lambda: deep_response_format(1000), {}),
    ("response-format-depth-400", "POST", "/v1/chat/completions", lambda: deep_response_format(400), {}),
    ("max-tokens-10**12", "POST", "/v1/chat/completions", lambda: chat(max_tokens=10**12), {}),
    # Sanity: the plain auth failures.
    ("no-api-key", "GET", "/v1/models", None, {"Authorization": None}),
    ("wrong-api-key", "GET", "/v1/models", None, {"Authorization": "Bearer sk-not-the-key"}),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "path", "body", "headers"), [pytest.param(*h[1:], id=h[0]) for h in HOSTILE])
def test_hostile_request(stack, method, path, body, headers):
    """After the fuzzing, on the same stack; one that does not answer in time is restarted (it may
    still be working on the request), so the next case starts clean."""
    sent = {"Authorization": f"Bearer {KEY}".encode()} | headers
    sent = {k: v for k, v in sent.items() if v is not None}
    body = body() if body is not None else None
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    if content is not None:
        sent["Content-Type"] = "application/json"
    started = time.monotonic()
    try:
        response = httpx.request(method, stack.url + path, content=content, headers=sent,
                                 timeout=HOSTILE_TIMEOUT_S)
    except httpx.TimeoutException:
        STATS["hostile"][(path, "timeout")] += 1
        stack.restart()
        pytest.fail(f"{method} {path}: no answer within {HOSTILE_TIMEOUT_S} s (a hang)")
    except httpx.TransportError as exc:
        STATS["hostile"][(path, type(exc).__name__)] += 1
        stack.restart()
        pytest.fail(f"{method} {path}: the connection failed: {exc!r}")
    elapsed = time.monotonic() - started
    STATS["hostile"][(path, response.status_code)] += 1
    SLOWEST["hostile"] = max(SLOWEST["hostile"], elapsed)
    where = f"{method} {path} -> {response.status_code} in {elapsed:.1f} s: {response.text[:400]!r}"
    assert 400 <= response.status_code < 500, f"want a 4xx; {where}"
    problems = response_problems(response.status_code, response.headers.get("content-type", ""), response.text)
    assert not problems, f"{problems}; {where}"
