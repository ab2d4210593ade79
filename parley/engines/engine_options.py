"""Each built-in engine's own options: the fields of its model are its command-line flags.

An engine contributes its options through the `parley.engine_options` entry-point group (beside
`parley.engines`), so `parley worker`, `parley chat` and `parley serve` offer every engine's flags
from one place, and a third-party engine adds its own the same way. These models live apart from
the engines so that listing the flags (any `--help`) imports no engine, torch or transformers.

A field becomes `--field-name`: a bool is a switch, a Literal a choice, and `description` is its
help. Two engines may declare a field of one name (`device`, `max_batch_size`): it is one flag.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from parley.engines.base import EngineOptions

Device = Literal["auto", "cpu", "cuda", "mps", "xpu"]


class TransformersOptions(EngineOptions):
    device: Device = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    load_8bit: bool = Field(False, description="int8 weights (bitsandbytes on CUDA, PyTorch int8 on CPU)")
    num_gpus: int = Field(1, ge=1, description="spread the weights over this many GPUs")
    max_gpu_memory: str | None = Field(None, description="per-GPU memory budget, e.g. 13GiB")
    cpu_offloading: bool = Field(False, description="spill layers that do not fit on the GPU(s) to the CPU")
    max_batch_size: int = Field(32, ge=1, description="most sequences decoded together")
    trust_remote_code: bool = False


class LlamaCppOptions(EngineOptions):
    n_ctx: int | None = Field(None, ge=16, description="KV-cache cells shared by all sequences (default: the "
                                                         "model's context, at most 8192)")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: up to all cores, or "
                                                          "$OMP_NUM_THREADS, which Ray sets to a replica's "
                                                          "num_cpus; fewer while fewer measure faster, as when "
                                                          "another process takes a core)")
    n_gpu_layers: int = Field(0, ge=-1, description="layers offloaded to the GPU (-1: all)")
    max_batch_size: int = Field(32, ge=1, description="most sequences decoded together")
    prefix_cache_entries: int = Field(
        16, ge=0, le=200, description="finished sequences whose KV stays cached, so that a prompt starting with "
                                      "one (a conversation's earlier turns, a shared system prompt) skips its "
                                      "prefill; at most half the cells. Requests arriving together share "
                                      "their common prompt prefix too (0: neither)")
    weights: Literal["auto", "file", "f16"] = Field(
        "auto", description="file: the GGUF's own weight types; f16: its weights dequantized once to F16 "
                            "(cached), computed without quantized activations; auto: f16 for a quantized model "
                            "under 1B parameters (small models lose most to quantization), else file")


class OpenAIProxyOptions(EngineOptions):
    upstream_base_url: str | None = Field(None, description="e.g. http://gpu-box:8000/v1 (vLLM, Ollama, "
                                                             "llama-server...)")
    upstream_model: str | None = Field(None, description="the model's name upstream (default: the served name)")
    upstream_api_key_file: str | None = Field(
        None, description="file holding the upstream's API key (default: $PARLEY_UPSTREAM_API_KEY, else "
                          "$OPENAI_API_KEY for api.openai.com and the hosts in $PARLEY_OPENAI_KEY_HOSTS)",
        json_schema_extra={"metavar": "PATH"})
    upstream_api_key: str | None = Field(None, json_schema_extra={"hidden": True})  # in `ps`: for old scripts only
    api_endpoint_file: str | None = Field(
        None, description='JSON: {"served-name": {"api_base": URL, "api_key": KEY, "model_name": NAME}, ...}')


class SentenceTransformersOptions(EngineOptions):
    device: Device = "auto"
    trust_remote_code: bool = False
