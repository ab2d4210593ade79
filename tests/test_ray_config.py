"""`parley ray`'s config and commands without a Ray cluster: a bad config is refused before anything is sent,
naming the field or the flag; an unreachable dashboard is a clear error; and only parley.ray imports Ray.
(tests/test_ray_serve.py runs a real cluster.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from parley.errors import ParleyError
from parley.ray.config import deployment_names, parse_config, parse_serve_config
from tests.conftest import REPO, run_parley
from tests.servers import free_port


def config(**args) -> dict:
    return {"models": [{"worker": {"engine": "llamacpp"}}], **args}


def parley(capsys, *argv: str) -> subprocess.CompletedProcess:
    """The `parley` command, run in this process (as a subprocess runs it, less the start-up)."""
    from parley.cli import main

    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


def deploy(tmp_path: Path, capsys, body: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(body))
    return parley(capsys, "ray", "deploy", str(path), "--address", f"http://127.0.0.1:{free_port()}")


@pytest.mark.parametrize("change, says", [
    ({"models": [{"worker": {"bogus-flag": 1}}]}, "unknown worker flags: --bogus-flag 1"),
    ({"models": [{"worker": {"--model-path": "x"}}]}, "without the leading '--'"),
    ({"models": [{"worker": {"engine": "llamacpp", "port": 9000}}]}, "'port' has no meaning under Ray Serve"),
    ({"models": [{"worker": {"engine": "no-such-engine"}}]}, "no engine 'no-such-engine' (installed: "),
    ({"models": [{"worker": {}, "num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}]},
     "num_replicas or autoscaling_config, not both"),
    ({"models": [{"worker": {}, "num_replica": 2}]}, "models.0.num_replica: Extra inputs are not permitted"),
    ({"web": {"sign": "open"}}, "unknown web flags: --sign"),  # argparse would take it for --signup
    ({"models": []}, "models: List should have at least 1 item"),
    ({"api": {"auth": "yes"}}, "bad api flags --auth yes"),
    ({"web": {"signup": "sometimes"}}, "invalid choice: 'sometimes'"),
])
def test_a_bad_config_is_refused_naming_what_is_wrong_before_anything_is_sent(tmp_path, capsys, change, says):
    result = deploy(tmp_path, capsys, config(**change))
    assert result.returncode == 2, result.stdout
    assert says in result.stderr, result.stderr
    assert "cannot reach the Ray dashboard" not in result.stderr  # refused here, not sent


def test_a_serve_config_or_a_file_that_is_not_yaml_is_refused(tmp_path, capsys):
    result = deploy(tmp_path, capsys, {"applications": [{"name": "x", "import_path": "parley.ray.app:ingress"}]})
    assert result.returncode == 2 and "is a Serve config (it has `applications`)" in result.stderr
    (tmp_path / "broken.yaml").write_text("models: [\n")
    result = parley(capsys, "ray", "deploy", str(tmp_path / "broken.yaml"))
    assert result.returncode == 2 and "is not YAML" in result.stderr
    result = parley(capsys, "ray", "deploy", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_render_writes_one_application_per_model_with_serves_settings_where_serve_changes_them_in_place(
        tmp_path, capsys):
    path = tmp_path / "parley.yaml"
    path.write_text(yaml.safe_dump(config(models=[
        {"worker": {"engine": "llamacpp", "limit-worker-concurrency": 16}, "num_replicas": 2},
        {"worker": {"model-path": "all-minilm-l6-v2", "engine": "sentence-transformers"},
         "autoscaling_config": {"min_replicas": 1, "max_replicas": 3}, "ray_actor_options": {"num_cpus": 0.5}}],
        api={"auth": True}, web=None)))
    result = parley(capsys, "ray", "render", str(path))
    assert result.returncode == 0, result.stderr
    serve = parse_serve_config(yaml.safe_load(result.stdout))  # parley's own check of a Serve config
    apps = {a.name: a for a in serve.applications}
    assert list(apps) == ["parley", "parley-model-smollm2-135m-instruct", "parley-model-all-minilm-l6-v2"]
    assert apps["parley"].route_prefix == "/" and apps["parley"].import_path == "parley.ray.app:ingress"
    assert apps["parley"].args == {"models_prefix": "parley-model-", "api": {"auth": True}, "web": None}
    chat = apps["parley-model-smollm2-135m-instruct"]
    assert chat.route_prefix is None and chat.args == {"worker": {"engine": "llamacpp", "limit-worker-concurrency": 16}}
    assert chat.deployments[0]["num_replicas"] == 2 and chat.deployments[0]["max_ongoing_requests"] == 16
    embed = apps["parley-model-all-minilm-l6-v2"].deployments[0]
    assert embed["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3} and "num_replicas" not in embed
    assert embed["ray_actor_options"] == {"num_cpus": 0.5}
    bad = yaml.safe_load(result.stdout)
    bad["applications"][1]["args"]["worker"]["port"] = 1
    with pytest.raises(ParleyError, match="'port' has no meaning under Ray Serve"):
        parse_serve_config(bad)


def test_a_good_config_goes_to_the_dashboard_and_an_unreachable_one_is_a_clear_error(tmp_path, capsys):
    result = deploy(tmp_path, capsys, config(web=None, api={"auth": True, "api-keys-file": "/run/secrets/keys"}))
    assert result.returncode == 2
    assert "cannot reach the Ray dashboard at http://127.0.0.1:" in result.stderr and "ray start --head" in result.stderr
    result = run_parley("ray", "status", "--address", f"http://127.0.0.1:{free_port()}")  # as a user runs it
    assert result.returncode == 2 and "cannot reach the Ray dashboard" in result.stderr


def test_flags_become_the_command_line_their_command_reads():
    from parley.ray.config import flags_to_argv

    assert flags_to_argv({"model-path": "m.gguf", "auth": True, "no-web": False, "x": None, "api-key": ["a", "b"],
                          "n-ctx": 4096}) == ["--model-path", "m.gguf", "--auth", "--api-key", "a", "--api-key", "b",
                                              "--n-ctx", "4096"]


def test_deployments_are_named_after_their_models_so_a_redeploy_updates_them_in_place():
    parsed = parse_config({"models": [
        {"worker": {"engine": "llamacpp"}},
        {"worker": {"model-path": "/models/Qwen3-8B-Q4_K_M.gguf"}},
        {"worker": {"model-path": "/models/other/Qwen3-8B-Q4_K_M.gguf"}},
        {"worker": {"model-names": "gpt-4o,gpt-4", "engine": "openai"}},
    ]})
    assert deployment_names(parsed.models) == [
        "model-smollm2-135m-instruct", "model-Qwen3-8B-Q4_K_M.gguf", "model-Qwen3-8B-Q4_K_M.gguf-2", "model-gpt-4o"]


def test_only_parley_ray_imports_ray():
    importers = []
    for path in (REPO / "parley").rglob("*.py"):
        if re.search(r"^\s*(import ray\b|from ray\b)", path.read_text(), re.M):
            importers.append(path.relative_to(REPO).as_posix())
    assert importers and all(p.startswith("parley/ray/") for p in importers), importers
    # the command line (`parley ray deploy` included) and the config checks run without importing Ray
    probe = ("import sys, parley.cli, parley.ray.config, parley.ray.server_flags, parley.serving.api, parley.web.app; "
             "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO).returncode == 0
