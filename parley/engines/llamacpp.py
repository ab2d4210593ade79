"""`LlamaCppEngine`: GGUF models through llama-cpp-python, with continuous batching.

One thread owns the llama.cpp context. Each step puts one decode token for every running
sequence and as much of the waiting prompts as fits (`n_batch`) into a single `llama_decode`;
each sequence lives under its own sequence id in a KV cache shared by all of them (`--n-ctx`
cells in total). Tokens are chosen by the same per-request sampler as the transformers
engine, so sampling, penalties, grammars and log-probabilities behave identically.

When a `llama_decode` fails, what it added to the cache is removed and its parts are decoded
apart (the running sequences' tokens together, each prompt chunk alone), so only the part
that fails ends, with `RequestFailedError`: a prompt the model fails on ends alone.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parley.engines.base import (
    EmbeddingResult,
    ModelInfo,
    RequestFailedError,
)
from parley.engines.engine_options import LlamaCppOptions
from parley.engines.model_loop import LocalEngine, ModelLoop
from parley.engines.prefix_cache import MIN_REUSE_TOKENS, PrefixCache, common_prefix
from parley.engines.sampling import (
    PromptLogprobs,
    SamplerFactory,
    SequenceState,
    TokenEvent,
    advance_rows,
)
from parley.engines.thread_tuning import OtherProcessesLoad, ThreadTuner, usable_cores
from parley.errors import ContextLengthError, ModelLoadError, ParleyError
from parley.models.source import ModelSource, SourceKind

log = logging.getLogger(__name__)

DEFAULT_MAX_CTX = 8192


EMBED_MAX_TOKENS = 2048  # one micro-batch per text when embedding


def _llama_cpp():
    try:
        import llama_cpp
        import llama_cpp._logger
    except ImportError:
        raise ParleyError("the llamacpp engine needs llama-cpp-python: pip install 'parley[llamacpp]'") from None
    # llama.cpp logs every tensor it sets up; keep its errors only, unless parley runs at DEBUG.
    llama_cpp._logger.set_verbose(log.isEnabledFor(logging.DEBUG))
    return llama_cpp


@dataclass(eq=False)
class _Slot:
    """A sequence and its place in the KV cache."""

    seq: SequenceState
    seq_id: int
    n_past: int = 0  # tokens of this sequence already in the KV cache
    # A running sequence whose first `shared` prompt tokens this one's prompt starts with: they are taken
    # from its cells once it has computed them, instead of being prefilled twice.
    leader: _Slot | None = None
    shared: int = 0
    _prompt: np.ndarray | None = None
    # The prompt's log-probabilities so far, one part per prefill chunk (when the request asks for them).
    prompt_logprobs: list[PromptLogprobs] | None = None

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.seq.prompt_ids)

    @property
    def prompt(self) -> np.ndarray:
        if self._prompt is None:
            self._prompt = np.asarray(self.seq.prompt_ids, dtype=np.int64)
        return self._prompt


@dataclass(eq=False)
class _Piece:
    """What one sequence puts into a `llama_decode`: its next token, or a chunk of its prompt."""

    slot: _Slot
    tokens: list[int]
    prompt: bool  # a chunk of the prompt (else the token it generated last)
    samples: bool  # the last token's logits choose the sequence's next token


class LlamaCppBatcher(ModelLoop):
    thread_name = "parley-llamacpp"

    def __init__(self, model, ctx, n_vocab: int, n_batch: int, n_seq: int, threads: ThreadTuner,
                 prefixes: PrefixCache):
        super().__init__()
        self._lib = _llama_cpp()
        self._threads = threads
        self._model, self._ctx = model, ctx
        self._n_vocab = n_vocab
        self._n_batch = n_batch
        self._n_ctx = ctx.n_ctx()
        self._n_seq = n_seq  # the most sequences decoding at once
        self._prefixes = prefixes  # finished sequences' cells, under the spare sequence ids
        self._free_ids = list(range(n_seq + prefixes.max_entries))
        self._batch = self._lib.llama_batch_init(max(n_batch, n_seq), 0, 1)
        self._running: list[_Slot] = []
        self.start()

    def running_count(self) -> int:
        return len(self._running)

    def _take_running(self) -> list[SequenceState]:
        seqs = [s.seq for s in self._running]
        for slot in self._running:
            self._release(slot, keep=False)  # a failed step or shutdown: its cells may be half written
        self._running = []
        for seq_id in self._prefixes.clear():
            self._forget(seq_id)
        return seqs

    def _on_close(self) -> None:
        self._lib.llama_batch_free(self._batch)

    def _cells_in_use(self) -> int:
        """An upper bound of the KV cells held: the running sequences' and the cached prefixes'."""
        return sum(len(s.seq.prompt_ids) + len(s.seq.generated) for s in self._running) + self._prefixes.cells

    def _room(self, cells: int) -> bool:
        """Whether `cells` more fit, dropping cached prefixes (least recently used first) to make room."""
        while self._cells_in_use() + cells > self._n_ctx and len(self._prefixes):
            self._forget(self._prefixes.pop_oldest())
        return self._cells_in_use() + cells <= self._n_ctx

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self._n_seq:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                continue
            fits = self._room(len(seq.prompt_ids) + len(self._running) + 1)  # drops cached prefixes as needed
            if self._running and not fits:
                break  # the KV cache is full: wait for running sequences to finish
            self._waiting.popleft()
            if self._running:
                self.stats.joined_running_batch += 1
            # n_seq + max_entries ids, fewer than n_seq running and at most max_entries cached: one is free
            slot = _Slot(seq, self._free_ids.pop())
            if seq.prompt_logprobs is not None:  # every prompt position is computed for its logits: nothing reused
                slot.prompt_logprobs = []
                self._running.append(slot)
                continue
            leader, shared = self._leader_for(slot)
            reuse = self._prefixes.best(slot.prompt, longer_than=shared)
            if reuse is not None:
                entry, length = reuse
                self._take_cells(slot, entry.seq_id, length)
            elif leader is not None:  # `_step` takes the leader's cells once they are computed
                slot.leader, slot.shared = leader, shared
            self._running.append(slot)

    def _leader_for(self, slot: _Slot) -> tuple[_Slot | None, int]:
        """The running sequence sharing the longest prompt prefix with `slot`'s (at least MIN_REUSE_TOKENS,
        and short of its last token, which is decoded for its logits), and that length. None with the prefix
        cache off (`--prefix-cache-entries 0`: every prompt is prefilled in full)."""
        found, length = None, MIN_REUSE_TOKENS - 1
        for other in self._running if self._prefixes.max_entries else ():
            n = min(common_prefix(other.prompt, slot.prompt), len(slot.prompt) - 1)
            if n > length:
                found, length = other, n
        return (found, length) if found is not None else (None, 0)

    def _take_cells(self, slot: _Slot, source: int, length: int) -> None:
        """`slot` shares the first `length` cells of sequence `source` (a cached entry or a running leader): the
        cells get its id too, no copy; its prefill starts after them."""
        self._lib.llama_memory_seq_cp(self._ctx.memory, source, slot.seq_id, 0, length)
        slot.n_past = length
        self.stats.cached_prompt_tokens += length

    def _follow(self, slot: _Slot) -> bool:
        """Whether `slot` may prefill now: once its leader has computed the shared prompt tokens it takes
        those cells; while the leader is still on them it waits; a leader gone before that (finished,
        cancelled) leaves it to the prefix cache and its own prefill."""
        leader = slot.leader
        if leader is None:
            return True
        running = leader in self._running
        if running and leader.n_past < slot.shared:
            return False
        slot.leader = None
        if running:
            self._take_cells(slot, leader.seq_id, slot.shared)
        elif (reuse := self._prefixes.best(slot.prompt)) is not None:
            entry, length = reuse
            self._take_cells(slot, entry.seq_id, length)
        return True

    def _forget(self, seq_id: int) -> None:
        self._lib.llama_memory_seq_rm(self._ctx.memory, seq_id, -1, -1)
        self._free_ids.append(seq_id)

    def _release(self, slot: _Slot, keep: bool = True) -> None:
        """A sequence is done: its cells stay as a cached prefix (`keep`), or are freed."""
        if not keep:
            self._forget(slot.seq_id)
            return
        held = (slot.seq.prompt_ids + slot.seq.generated)[: slot.n_past]  # the last token was never decoded
        for seq_id in self._prefixes.add(slot.seq_id, held):
            self._forget(seq_id)

    def _step(self) -> None:
        live = []
        for slot in self._running:
            if slot.seq.cancelled:
                self._release(slot)
            else:
                live.append(slot)
        self._running = live
        if not live:
            return
        # One shared cache: when it is about to overflow (cached prefixes dropped first), the longest sequence
        # ends at its length limit.
        while not self._room(len(self._running)) and len(self._running) > 1:
            longest = max(self._running, key=lambda s: len(s.seq.prompt_ids) + len(s.seq.generated))
            self._finish_for_length(longest)
        pieces = [_Piece(s, [s.seq.generated[-1]], prompt=False, samples=True) for s in self._running if not s.prefilling]
        budget = self._n_batch - len(pieces)
        for slot in self._running:
            if budget <= 0:
                break
            if not slot.prefilling or not self._follow(slot):
                continue
            prompt = slot.seq.prompt_ids
            chunk = prompt[slot.n_past: slot.n_past + budget]
            pieces.append(_Piece(slot, chunk, prompt=True, samples=slot.n_past + len(chunk) == len(prompt)))
            budget -= len(chunk)
        only_decoding = all(not piece.prompt for piece in pieces)
        started = time.perf_counter()
        done = self._decode_apart_on_failure(pieces)
        if only_decoding and done:
            self._tuned(len(done), time.perf_counter() - started)
        decoded = [piece for piece, _ in done if not piece.prompt]
        if len(decoded) < len(done):
            self.stats.prefill_batches += 1
        if decoded:
            self.stats.decode_steps += 1
            self.stats.decode_tokens += len(decoded)
            self.stats.max_batch_size_seen = max(self.stats.max_batch_size_seen, len(decoded))
        sampled = [(piece.slot, row) for piece, row in done if row is not None]
        if not sampled:
            return
        slots = [slot for slot, _ in sampled]
        rows = np.stack([row for _, row in sampled])
        keep = set(advance_rows([s.seq for s in slots], rows, self._finished_one))
        for i, slot in enumerate(slots):
            if i not in keep:
                self._running.remove(slot)
                self._release(slot)

    def _tuned(self, tokens: int, seconds: float) -> None:
        before, kept = self._threads.threads(), self._threads.current
        changed = self._threads.record(tokens, seconds)
        if changed is not None:
            log.info("%s: decoding with %d thread(s) from now on: it measured faster than %d", self.thread_name,
                     changed, kept)
        if self._threads.threads() != before:
            self._lib.llama_set_n_threads(self._ctx.ctx, self._threads.threads(), self._threads.threads())
        self.stats.threads = self._threads.current

    def _decode_apart_on_failure(self, pieces: list[_Piece]) -> list[tuple[_Piece, np.ndarray | None]]:
        """Decode the pieces together; when that fails, the running sequences' tokens together and
        each prompt chunk alone, ending only the sequences whose part fails."""
        try:
            return self._decode(pieces)
        except Exception as exc:
            parts = [part for part in ([p for p in pieces if not p.prompt], *([p] for p in pieces if p.prompt)) if part]
            if len(parts) == 1:
                self._decode_failed(pieces, exc)
                return []
            log.warning("%s: a batch of %d sequences failed (%s: %s); decoding its parts apart",
                        self.thread_name, len(pieces), type(exc).__name__, exc)
        done: list[tuple[_Piece, np.ndarray | None]] = []
        for part in parts:
            try:
                done += self._decode(part)
            except Exception as exc:
                self._decode_failed(part, exc)
        return done

    def _decode(self, pieces: list[_Piece]) -> list[tuple[_Piece, np.ndarray | None]]:
        """One `llama_decode` of the pieces; each piece with its logits row when it samples. On
        failure the cache is left as it was before. A prompt chunk of a sequence that asks for its
        prompt's log-probabilities has logits at every token (`_prompt_logprobs`)."""
        batch, n = self._batch, 0
        rows_at: list[int] = []
        for piece in pieces:
            slot = piece.slot
            every = piece.prompt and slot.prompt_logprobs is not None
            for i, token in enumerate(piece.tokens):
                batch.token[n], batch.pos[n] = token, slot.n_past + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq_id
                batch.logits[n] = every or (piece.samples and i == len(piece.tokens) - 1)
                n += 1
            rows_at.append(n - 1)
        batch.n_tokens = n
        try:
            code = self._lib.llama_decode(self._ctx.ctx, batch)
            if code != 0:
                raise RuntimeError(f"llama_decode returned {code}")
        except Exception:
            for piece in pieces:  # llama.cpp drops a failed batch from the cache itself; make sure
                self._lib.llama_memory_seq_rm(self._ctx.memory, piece.slot.seq_id, piece.slot.n_past, -1)
            raise
        done: list[tuple[_Piece, np.ndarray | None]] = []
        for piece, index in zip(pieces, rows_at):
            if piece.prompt and piece.slot.prompt_logprobs is not None:
                self._prompt_logprobs(piece, index)
            piece.slot.n_past += len(piece.tokens)
            row = None
            if piece.samples:
                ptr = self._lib.llama_get_logits_ith(self._ctx.ctx, index)
                row = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()
            done.append((piece, row))
        return done

    def _prompt_logprobs(self, piece: _Piece, last: int) -> None:
        """The log-probabilities of the prompt tokens this chunk's logits predict (batch rows `last - len + 1` to
        `last`); once the prompt is all computed they go to the request, before its first token."""
        slot, seq = piece.slot, piece.slot.seq
        first = last - len(piece.tokens) + 1
        follows = seq.prompt_ids[slot.n_past + 1: slot.n_past + len(piece.tokens) + 1]  # the token after each place
        rows = np.empty((len(follows), self._n_vocab), dtype=np.float32)
        for i in range(len(follows)):
            rows[i] = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._ctx.ctx, first + i), shape=(self._n_vocab,))
        assert slot.prompt_logprobs is not None and seq.prompt_logprobs is not None
        slot.prompt_logprobs.append(PromptLogprobs.of(rows, follows, seq.prompt_logprobs))
        if slot.n_past + len(piece.tokens) == len(seq.prompt_ids):
            try:
                seq.emit(PromptLogprobs.joined(slot.prompt_logprobs))
            except RuntimeError:  # the consumer's event loop is gone
                seq.cancelled = True
            slot.prompt_logprobs = []

    def _decode_failed(self, pieces: list[_Piece], exc: Exception) -> None:
        stage = "the model failed on this prompt" if pieces[0].prompt else "the model failed while generating"
        log.error("%s: %s (%d sequences): %s: %s", self.thread_name, stage, len(pieces), type(exc).__name__, exc)
        for piece in pieces:
            self._running.remove(piece.slot)
            self._release(piece.slot, keep=False)
        self._fail([piece.slot.seq for piece in pieces], RequestFailedError(stage, exc))

    def _finish_for_length(self, slot: _Slot) -> None:
        self._running.remove(slot)
        self._release(slot)
        try:
            slot.seq.emit(TokenEvent([], "length"))
        except RuntimeError:
            pass
        self._finished_one()


FULL_PRECISION_FILE_TYPES = {"0", "1", "32"}  # general.file_type: F32, F16, BF16
SMALL_MODEL_PARAMS = 1_000_000_000  # below this, `--weights auto` serves a quantized file as F16


def _load_model(lib, gguf_path: str, params, weights: str):
    """The model of `gguf_path`, or of its F16 copy when `weights` asks for one. A small model loses much of its
    quality to quantized matrix products: the bundled SmolLM2-135M (Q4_1, or requantized to Q8_0) answers
    "L'Étoile, la Marseillaise…" to "What is the capital of France?", and as F16 exactly what the float model
    answers (benchmarks/weight_quality.py); in F16 it is 270 MB."""
    from llama_cpp import _internals

    try:
        model = _internals.LlamaModel(path_model=gguf_path, params=params, verbose=False)
    except ValueError:  # llama.cpp says only "failed to load"
        raise ModelLoadError(f"llama.cpp could not load {gguf_path}: not a valid GGUF file, or a model "
                             "architecture this llama.cpp does not know") from None
    if weights == "file" or model.metadata().get("general.file_type") in FULL_PRECISION_FILE_TYPES:
        return model
    if weights == "auto" and model.n_params() >= SMALL_MODEL_PARAMS:
        return model
    from parley.models.gguf_cache import f16_copy

    f16 = f16_copy(Path(gguf_path), lib)
    model.close()
    log.info("serving %s as F16 (%s)", Path(gguf_path).name, f16)
    return _internals.LlamaModel(path_model=str(f16), params=params, verbose=False)


def has_amx_path(system_info: str) -> bool:
    """Whether llama.cpp was built with its AMX kernels (`llama_print_system_info` says AMX_INT8 = 1)."""
    return "AMX_INT8 = 1" in system_info


class LlamaCppEngine(LocalEngine):
    name = "llamacpp"

    def __init__(self, gguf_path: str, model_name: str, options: LlamaCppOptions):
        lib = _llama_cpp()
        from llama_cpp import _internals

        self._lib = lib
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = 0x7FFFFFFF if options.n_gpu_layers < 0 else options.n_gpu_layers
        if has_amx_path(lib.llama_print_system_info().decode()):
            # llama.cpp's AMX matrix multiply crashes on Intel CPUs with AMX (llama.cpp #20824); its weights
            # reach it only through the "extra" buffer types, so keep to the plain CPU buffers.
            log.warning("this llama.cpp build has the AMX path, which crashes on CPUs with AMX: weights are not "
                        "repacked (`make install` builds llama.cpp without it, for full speed)")
            model_params.use_extra_bufts = False
        self._model = _load_model(lib, gguf_path, model_params, options.weights)
        model = self._model
        self._n_vocab = self._vocab_size = model.n_vocab()
        self._context_length = min(model.n_ctx_train(), options.n_ctx or DEFAULT_MAX_CTX)
        n_seq = min(options.max_batch_size, lib.llama_max_parallel_sequences())
        spare_ids = max(0, min(options.prefix_cache_entries, lib.llama_max_parallel_sequences() - n_seq))
        self._threads = options.n_threads or usable_cores()
        ctx_params = lib.llama_context_default_params()
        ctx_params.n_ctx = options.n_ctx or self._context_length
        ctx_params.n_batch = ctx_params.n_ubatch = max(512, n_seq)
        ctx_params.n_seq_max = n_seq + spare_ids
        ctx_params.kv_unified = True
        ctx_params.n_threads = ctx_params.n_threads_batch = self._threads
        self._ctx = _internals.LlamaContext(model=model, params=ctx_params, verbose=False)
        self._embed_ctx = None
        self._eos_ids = frozenset(t for t in range(self._n_vocab) if lib.llama_vocab_is_eog(model.vocab, t))
        self._add_bos = model.add_bos_token()
        meta = model.metadata()
        self._info = ModelInfo(
            name=model_name, engine=self.name, context_length=self._context_length,
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=self._token_text(model.token_bos()), eos_token=self._token_text(model.token_eos()),
            device="cuda" if options.n_gpu_layers else "cpu", dtype=meta.get("general.file_type", "gguf"),
            num_parameters=model.n_params(),
        )
        tuner = ThreadTuner(self._threads, probe_every=64 if options.n_threads is None else 0,  # 0: as given
                            others_busy=OtherProcessesLoad())
        prefixes = PrefixCache(spare_ids, max_cells=ctx_params.n_ctx // 2)
        self._loop = LlamaCppBatcher(model, self._ctx, self._n_vocab, ctx_params.n_batch, n_seq, tuner, prefixes)
        self._vocab = SamplerFactory(self._grammar_factory)

    def _grammar_factory(self):
        from parley.engines.guided import GrammarFactory

        return GrammarFactory.from_llamacpp(self._model.vocab, self._n_vocab, self._eos_ids)

    def _token_text(self, token: int) -> str | None:
        return None if token < 0 else self._model.token_get_text(token)

    @classmethod
    def create(cls, source: ModelSource, options: LlamaCppOptions) -> LlamaCppEngine:
        if source.kind != SourceKind.GGUF:
            raise ParleyError(f"the llamacpp engine serves GGUF files; {source.location!r} is not one "
                              "(use --engine transformers for Hugging Face models)")
        engine = cls(source.location, options.model_name or source.name, options)
        engine._conv_template = options.conv_template
        return engine

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self._model.tokenize(text.encode(), add_bos=add_special_tokens and self._add_bos, special=True)

    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_token_to_piece(self._model.vocab, token, buf, len(buf), 0, special)
        return bytes(buf[: max(n, 0)])

    def _decode(self, ids) -> str:
        return b"".join(self._piece(t) for t in ids).decode("utf-8", errors="replace")

    def _decode_all(self, ids) -> str:
        return b"".join(self._piece(t, special=True) for t in ids).decode("utf-8", errors="replace")

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        """Mean-pooled, normalized embeddings from a second context in embedding mode."""
        if not texts:
            return EmbeddingResult(embeddings=[], prompt_tokens=0)
        return await asyncio.wrap_future(self._loop.call(lambda: self._embed_now(texts)))

    def _embed_now(self, texts: list[str]) -> EmbeddingResult:
        lib = self._lib
        from llama_cpp import _internals

        limit = min(self._context_length, EMBED_MAX_TOKENS)
        encoded = [self._encode(t, True) for t in texts]
        for ids in encoded:
            if len(ids) > limit:
                raise ContextLengthError(len(ids), limit)
        if self._embed_ctx is None:
            params = lib.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = limit
            params.embeddings = True
            params.pooling_type = lib.LLAMA_POOLING_TYPE_MEAN
            params.n_threads = params.n_threads_batch = self._threads
            self._embed_ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        ctx = self._embed_ctx
        n_embd = self._model.n_embd()
        batch = lib.llama_batch_init(limit, 0, 1)
        vectors = []
        try:
            for ids in encoded:
                lib.llama_memory_clear(ctx.memory, True)
                batch.n_tokens = len(ids)
                for i, token in enumerate(ids):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = True
                if (code := lib.llama_decode(ctx.ctx, batch)) != 0:
                    raise RequestFailedError("the model failed on this embedding input",
                                             RuntimeError(f"llama_decode returned {code}"))
                vec = np.ctypeslib.as_array(lib.llama_get_embeddings_seq(ctx.ctx, 0), shape=(n_embd,)).astype(np.float64)
                vectors.append((vec / (np.linalg.norm(vec) or 1.0)).tolist())
        finally:
            lib.llama_batch_free(batch)
        return EmbeddingResult(embeddings=vectors, prompt_tokens=sum(len(ids) for ids in encoded))
