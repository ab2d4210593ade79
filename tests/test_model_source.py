"""`--model-path` resolution, and the one-line errors a user sees for bad paths."""

from __future__ import annotations

import json

import pytest

from parley.errors import ModelPathError
from parley.models.bundled import BUNDLED_MODEL_NAME
from parley.models.source import SourceKind, resolve_model_source
from tests.conftest import run_parley


def test_no_path_means_the_bundled_model():
    source = resolve_model_source(None)
    assert source.kind is SourceKind.GGUF and source.name == BUNDLED_MODEL_NAME
    assert source.path.is_file() and source.path.suffix == ".gguf"
    assert resolve_model_source(BUNDLED_MODEL_NAME) == source  # by name too: what adapters trained on it record


def test_gguf_file_and_hf_directory_and_hub_id(tmp_path):
    gguf = tmp_path / "My-Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_source(str(gguf)).kind is SourceKind.GGUF
    assert resolve_model_source(str(gguf)).name == "My-Model.Q4"
    assert resolve_model_source(str(tmp_path)).kind is SourceKind.GGUF  # a directory with one .gguf

    hf = tmp_path / "tiny-chat"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (hf / "model.safetensors").write_bytes(b"")
    source = resolve_model_source(str(hf))
    assert source.kind is SourceKind.HF_DIR and source.name == "tiny-chat"

    hub = resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert hub.kind is SourceKind.HUB and hub.name == "SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: str(p / "missing"), "does not exist"),
        (lambda p: "./relative/missing", "does not exist"),
        (lambda p: str(p), "holds no model"),
        (lambda p: (p / "notes.txt").write_text("x") and str(p / "notes.txt"), "not a .gguf file"),
        (lambda p: (p / "config.json").write_text("{}") and str(p), "no weight files"),
    ],
)
def test_unusable_paths_fail_with_a_message_naming_them(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(ModelPathError, match=match) as info:
        resolve_model_source(path)
    assert path in str(info.value)


@pytest.mark.parametrize("bad", ["/no/such/model", "EMPTY_DIR", "CORRUPT_GGUF", "CORRUPT_HF_DIR"])
def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path, bad):
    path = {"EMPTY_DIR": str(tmp_path), "CORRUPT_GGUF": str(tmp_path / "broken.gguf"),
            "CORRUPT_HF_DIR": str(tmp_path)}.get(bad, bad)
    if bad == "CORRUPT_GGUF":
        (tmp_path / "broken.gguf").write_bytes(b"GGUF not really")
    if bad == "CORRUPT_HF_DIR":
        (tmp_path / "config.json").write_text('{"model_type": "llama"}')
        (tmp_path / "model.safetensors").write_bytes(b"garbage")
    result = run_parley("chat", "--model-path", path, "--style", "programmatic", stdin="hi\n", timeout=120,
                        env={"PARLEY_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert path in lines[0] and "Traceback" not in result.stderr
    assert result.stdout == ""
