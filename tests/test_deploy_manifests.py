"""deploy/: the Kubernetes manifests, parley's Ray configs and the Dockerfile, checked without a cluster or an image.

Each kustomize directory under deploy/k8s is built with `kubectl kustomize` (offline), and every object is checked
as the API server checks what `kubectl apply` sends it (field validation Strict: an unknown field is an error):
core and apps objects against Kubernetes' schemas (kubernetes_validate, strict) at the oldest and the newest
Kubernetes we claim; each RayService against KubeRay's own CRD schema (vendored in deploy/k8s/schemas/) and its pod
templates against Kubernetes' PodTemplate schema. Each RayService's serveConfigV2 is a Serve config of parley's
applications (parse_serve_config) and exactly the rendering (`parley ray render`) of the parley config beside it
(deploy/k8s/base/parley.yaml, deploy/k8s/components/gpu/parley.yaml), which is read and checked as `parley ray
deploy` does (parse_config and check: each flag by its exact name in the parsers of `parley worker`, `parley api`
and `parley web`, the engines installed), and each model-path is a bundled model's name, a path or a hub id;
every file in deploy/ray/ is too. The replicas of every deployment are placed on the Ray nodes the manifest (or
the file's `ray start` line) provides. Then what ties the objects together: the database URL leads to the
PostgreSQL that is deployed, Serve listens where KubeRay's serve Service sends, head and workers run one image.
Broken copies show that each check refuses what it should.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

import parley.ray.config as ray_config
from parley.errors import ParleyError
from parley.models.bundled import BUNDLED_EMBEDDING_NAME, BUNDLED_MODEL_NAME
from parley.ray.config import (
    ParleyConfig,
    ServeConfig,
    parse_config,
    parse_serve_config,
    read_config,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
RAY_FILES = sorted(p.name for p in (DEPLOY / "ray").glob("*.yaml"))
# parley's Ray configs that a RayService's serveConfigV2 is rendered from.
K8S_PARLEY_CONFIGS = sorted(str(p.relative_to(K8S)) for p in K8S.rglob("parley.yaml"))
# The oldest Kubernetes the manifests claim, and the one KubeRay v1.7.0 is built against (k8s.io/api v0.36).
K8S_VERSIONS = ("1.30", "1.36")
RAYSERVICE_SCHEMA = K8S / "schemas" / "rayservice-v1.7.0.schema.json"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


# ---- building ---------------------------------------------------------------------------------------------------

@functools.cache
def _build(directory: Path) -> tuple[dict, ...]:
    if kubectl := shutil.which("kubectl"):
        command = [kubectl, "kustomize", str(directory)]
    elif kustomize := shutil.which("kustomize"):
        command = [kustomize, "build", str(directory)]
    else:
        pytest.skip("kubectl is not installed (nor kustomize): deploy/k8s is built with `kubectl kustomize`")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def build(directory: Path) -> list[dict]:
    """The objects `kubectl apply -k directory` would send (a copy: the caller may change it)."""
    return copy.deepcopy(list(_build(directory)))


def rayservices(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d.get("apiVersion") == "ray.io/v1" and d.get("kind") == "RayService"]


def ray_groups(rayservice: dict) -> list[tuple[str, dict, int]]:
    """(name, group, pods) for the head group and each worker group."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"], 1)]
    for group in cluster.get("workerGroupSpecs", []):
        groups.append((group["groupName"], group, group.get("replicas", group["minReplicas"])))
    return groups


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first


# ---- the checks: each returns the problems it finds ---------------------------------------------------------------

def kubernetes_problems(obj: dict) -> list[str]:
    """Against Kubernetes' own schema, unknown fields refused, at each version we claim."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    problems = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name} (Kubernetes {version}) at {exc.json_path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name}: Kubernetes {version} has no such kind")
    return problems


def _strict(node):
    """The schema with every object that lists its fields closed to others, as the API server's Strict field
    validation treats a structural CRD schema (except where it says x-kubernetes-preserve-unknown-fields)."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {key: ({name: _strict(s) for name, s in value.items()} if key == "properties"
                 else value if key in ("default", "enum") else _strict(value))
           for key, value in node.items()}
    open_ = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_:
        out["additionalProperties"] = False
    return out


@functools.cache
def _rayservice_validator() -> jsonschema.Validator:
    return jsonschema.Draft202012Validator(_strict(json.loads(RAYSERVICE_SCHEMA.read_text())))


def rayservice_problems(rayservice: dict) -> list[str]:
    """Against KubeRay's RayService schema; its pod templates (left out of the vendored schema) against Kubernetes'."""
    name = rayservice.get("metadata", {}).get("name")
    problems = [f"RayService/{name} at {e.json_path}: {e.message}"
                for e in _rayservice_validator().iter_errors(rayservice)]
    if problems:
        return problems
    for group_name, group, _ in ray_groups(rayservice):
        problems += kubernetes_problems({"apiVersion": "v1", "kind": "PodTemplate",
                                         "metadata": {"name": f"{name}-{group_name}"}, "template": group["template"]})
    return problems


@functools.cache
def _parley_check(config_json: str) -> str | None:
    try:
        ray_config.check(ParleyConfig.model_validate_json(config_json))
    except ParleyError as exc:
        return str(exc)
    return None


# The models bundled in the image (`make install` puts both there), which a model-path may name without a `/`.
# Any other single word would be taken for a hub id and fail at load (`model-path: bundled` is no such name).
BUNDLED = (BUNDLED_MODEL_NAME, BUNDLED_EMBEDDING_NAME)


def parley_config_problems(raw, where: str) -> tuple[ParleyConfig | None, list[str]]:
    """parley's own reading of its Ray config and its check, as `parley ray deploy` and `parley ray render` do:
    every flag read by its exact name by the parsers of `parley worker`, `parley api` and `parley web`, the
    engines installed. Then each model-path: a bundled model's name, a path, or a hub id (owner/name)."""
    try:
        config = parse_config(raw, where)
    except ParleyError as exc:
        return None, [str(exc)]
    problems = []
    if said := _parley_check(config.model_dump_json()):
        problems.append(f"{where}: {said}")
    for i, model in enumerate(config.models):
        path = model.worker.get("model-path")
        if path is not None and "/" not in str(path) and str(path).lower() not in BUNDLED:
            problems.append(f"{where}: models[{i}] model-path {path!r} names no bundled model (give none for the "
                            f"bundled chat model, or one of {', '.join(BUNDLED)}), and is no path or owner/name")
    return config, problems


def serve_config_problems(raw, where: str) -> tuple[ServeConfig | None, list[str]]:
    """A Serve config of parley's applications (serveConfigV2), as parley reads one."""
    try:
        return parse_serve_config(raw, where), []
    except ParleyError as exc:
        return None, [str(exc)]


def _rel(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT))


def parley_config_of(directory: Path) -> Path:
    """The parley config a kustomize directory's RayService is rendered from: that of the last component it takes
    which has one (a component's serveConfigV2 patch replaces the base's), else the base's."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for component in reversed(kustomization.get("components", [])):
        if (directory / component / "parley.yaml").is_file():
            return (directory / component / "parley.yaml").resolve()
    return K8S / "base" / "parley.yaml"


def serve_config_home(parley_yaml: Path) -> tuple[Path, str]:
    """The file beside a parley.yaml whose RayService (or patch of one) holds serveConfigV2, and that text."""
    for path in sorted(parley_yaml.parent.glob("*.yaml")):
        if path.name != parley_yaml.name:
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "RayService" and "serveConfigV2" in doc.get("spec", {}):
                    return path, doc["spec"]["serveConfigV2"]
    raise AssertionError(f"no RayService with serveConfigV2 beside {_rel(parley_yaml)}")


def drift_problems(serve_raw, config: ParleyConfig, parley_yaml: Path) -> list[str]:
    """serveConfigV2 is the parley config rendered (`parley ray render`), or the two have drifted apart."""
    try:
        expected = ray_config.render(config)
    except ParleyError as exc:
        return [f"{_rel(parley_yaml)} cannot be rendered: {exc}"]
    if serve_raw == expected:
        return []
    home, _ = serve_config_home(parley_yaml)
    diff = difflib.unified_diff(yaml.safe_dump(expected, sort_keys=False).splitlines(),
                                yaml.safe_dump(serve_raw, sort_keys=False).splitlines(),
                                f"parley ray render {_rel(parley_yaml)}", "serveConfigV2", lineterm="", n=1)
    return [f"serveConfigV2 is not {_rel(parley_yaml)} rendered: run `parley ray render {_rel(parley_yaml)}` and "
            f"paste its output into serveConfigV2 in {_rel(home)}\n" + "\n".join(list(diff)[:60])]


def _quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_nodes(rayservice: dict) -> list[tuple[float, float]]:
    """(GPUs, CPUs) Ray sees on each pod: rayStartParams, else what KubeRay derives from the container's limits
    (requests without limits), CPUs rounded up as KubeRay does."""
    nodes = []
    for _, group, pods in ray_groups(rayservice):
        params = group.get("rayStartParams", {})
        resources = ray_container(group).get("resources", {})
        given = resources.get("requests", {}) | resources.get("limits", {})
        if "num-cpus" in params:
            cpus = _quantity(params["num-cpus"])
        else:
            cpus = float(math.ceil(_quantity(given.get("cpu", 0))))
        gpus = _quantity(params.get("num-gpus", given.get("nvidia.com/gpu", 0)))
        nodes += [(gpus, cpus)] * pods
    return nodes


def replica_demands(config: ServeConfig) -> list[tuple[dict, str]]:
    """(ray_actor_options, what) for every replica the Serve config may run: each deployment at its most
    replicas (autoscaling's max_replicas), as its application's `deployments` section gives them."""
    demands = []
    for app in config.applications:
        for deployment in app.deployments:
            autoscaling = deployment.get("autoscaling_config")
            count = (autoscaling or {}).get("max_replicas", 1) if autoscaling is not None else \
                deployment.get("num_replicas", 1)
            options = deployment.get("ray_actor_options", {"num_cpus": 1})  # Serve's default: 1 CPU a replica
            demands += [(options, f"{app.name}/{deployment['name']}")] * int(count)
    return demands


def placement_problems(config: ServeConfig, nodes: list[tuple[float, float]], where: str) -> list[str]:
    """Every replica (each deployment at its most replicas) placed on a node with room for it, largest first; a
    replica without a place would wait forever and its application never become healthy."""
    free = [list(node) for node in nodes]
    problems = []
    wants = sorted(((float(o.get("num_gpus", 0)), float(o.get("num_cpus", 1)), what)
                    for o, what in replica_demands(config)), reverse=True)
    for gpus, cpus, what in wants:
        node = next((n for n in free if n[0] >= gpus - 1e-9 and n[1] >= cpus - 1e-9), None)
        if node is None:
            problems.append(f"{where}: no Ray node has room for a replica of {what} ({cpus:g} CPU, {gpus:g} GPU); "
                            f"free (GPU, CPU) per node: {[tuple(n) for n in free]}")
            continue
        node[0] -= gpus
        node[1] -= cpus
    return problems


def serve_port_problems(rayservice: dict, config: ServeConfig) -> list[str]:
    """KubeRay's serve Service sends to each pod's `serve` port (8000 when not named): Serve's proxy must listen
    there, on the pod's address."""
    problems = []
    if config.http_options.host not in ("0.0.0.0", "::"):
        problems.append(f"serveConfigV2 http_options.host is {config.http_options.host}: KubeRay's serve Service "
                        "cannot reach it; set 0.0.0.0")
    for group_name, group, _ in ray_groups(rayservice):
        ports = {p.get("name"): p["containerPort"] for p in ray_container(group).get("ports", [])}
        if ports.get("serve", 8000) != config.http_options.port:
            problems.append(f"{group_name}: the serve port is {ports.get('serve', 8000)}, Serve listens on "
                            f"{config.http_options.port}")
    return problems


def image_problems(rayservice: dict, *, named: bool) -> list[str]:
    """One image on head and workers (Ray wants the same Ray and Python on every node); a CUDA build where a
    group has GPUs; with `named`, an image an overlay has pointed at a registry (not the base's bare name)."""
    images = {ray_container(group)["image"] for _, group, _ in ray_groups(rayservice)}
    problems = [] if len(images) == 1 else [f"head and workers run different images: {sorted(images)}"]
    if any(gpus for gpus, _ in ray_nodes(rayservice)) and not all("cuda" in i.rsplit(":", 1)[-1] for i in images):
        problems.append(f"GPU workers with a CPU image: {sorted(images)} (build it with --build-arg VARIANT=cuda)")
    if named and "parley" in images:
        problems.append("the image is still the base's placeholder `parley`: the overlay must name the registry's")
    return problems


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def database_problems(docs: list[dict]) -> list[str]:
    """Every Ray container is given PARLEY_DB_URL, from the Secret (required), or pointing at the PostgreSQL
    deployed beside it: a Service of that name and port, selecting a StatefulSet whose user, database and password
    are the URL's."""
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    statefulsets = [d for d in docs if d["kind"] == "StatefulSet"]
    problems = []
    for rayservice in rayservices(docs):
        for group_name, group, _ in ray_groups(rayservice):
            container = ray_container(group)
            env = _env(container)
            url_env = env.get("PARLEY_DB_URL")
            if url_env is None:
                problems.append(f"{group_name}: no PARLEY_DB_URL: the database would be a SQLite file in one pod")
                continue
            if "valueFrom" in url_env:
                if url_env["valueFrom"].get("secretKeyRef", {}).get("optional"):
                    problems.append(f"{group_name}: PARLEY_DB_URL is optional")
                continue
            value = url_env["value"]
            before = list(env)[:list(env).index("PARLEY_DB_URL")]
            for var in re.findall(r"\$\((\w+)\)", value):
                if var not in before:  # Kubernetes expands only variables listed earlier; else the text stays
                    problems.append(f"{group_name}: PARLEY_DB_URL uses $({var}), not defined before it")
            url = urlsplit(value)
            service = services.get(url.hostname)
            port = next((p for p in service["spec"]["ports"] if p["port"] == url.port), None) if service else None
            if port is None:
                here = {n: [p["port"] for p in s["spec"]["ports"]] for n, s in services.items()}
                problems.append(f"{group_name}: PARLEY_DB_URL leads to {url.hostname}:{url.port}, which is no "
                                f"Service here ({here})")
                continue
            selector = service["spec"]["selector"].items()
            backing = [s for s in statefulsets if selector <= s["spec"]["template"]["metadata"]["labels"].items()]
            if len(backing) != 1:
                problems.append(f"{group_name}: Service {url.hostname} selects {len(backing)} StatefulSets")
                continue
            postgres = backing[0]["spec"]["template"]["spec"]["containers"][0]
            target = port.get("targetPort", port["port"])
            if target not in [q.get("name") if isinstance(target, str) else q["containerPort"]
                              for q in postgres.get("ports", [])]:
                problems.append(f"{group_name}: Service {url.hostname} sends to port {target!r}, which "
                                f"{backing[0]['metadata']['name']}'s container does not have")
            server = _env(postgres)
            if (server.get("POSTGRES_USER", {}).get("value"), server.get("POSTGRES_DB", {}).get("value")) != (
                    url.username, url.path.lstrip("/")):
                problems.append(f"{group_name}: PARLEY_DB_URL's user/database {url.username}/{url.path} are not the "
                                "server's POSTGRES_USER/POSTGRES_DB")
            password = re.fullmatch(r"\$\((\w+)\)", url.password or "")
            if not password or env.get(password[1], {}).get("valueFrom") != server.get("POSTGRES_PASSWORD", {}).get(
                    "valueFrom"):
                problems.append(f"{group_name}: PARLEY_DB_URL's password is not the server's POSTGRES_PASSWORD secret")
    return problems


def all_problems(docs: list[dict], parley: tuple[Path, object], *, with_database: bool = True,
                 named_image: bool = True) -> list[str]:
    """Every check of one kustomize build, its RayService's serveConfigV2 against `parley`: (the parley.yaml it is
    rendered from, that file's content)."""
    problems = []
    for obj in docs:
        if obj in rayservices([obj]):
            problems += rayservice_problems(obj)
        else:
            problems += kubernetes_problems(obj)
    if problems:
        return problems  # the rest reads the objects' fields, which must be there
    found = rayservices(docs)
    if len(found) != 1:
        return [f"{len(found)} RayServices"]
    rayservice = found[0]
    parley_yaml, parley_raw = parley
    parley_config, problems = parley_config_problems(parley_raw, _rel(parley_yaml))
    serve_raw = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    serve, said = serve_config_problems(serve_raw, "serveConfigV2")
    problems += said
    if parley_config is not None and not problems:
        problems += drift_problems(serve_raw, parley_config, parley_yaml)
    if serve is not None:
        problems += serve_port_problems(rayservice, serve)
        problems += placement_problems(serve, ray_nodes(rayservice), "serveConfigV2")
    problems += image_problems(rayservice, named=named_image)
    if with_database:
        problems += database_problems(docs)
    return problems


def shipped_problems(directory: Path, **kwargs) -> list[str]:
    parley_yaml = parley_config_of(directory)
    return all_problems(build(directory), (parley_yaml, yaml.safe_load(parley_yaml.read_text())), **kwargs)


# ---- the manifests as shipped -------------------------------------------------------------------------------------

def test_the_overlays_are_there():
    assert {"postgres", "external-db", "gpu"} <= set(OVERLAYS)
    assert K8S_PARLEY_CONFIGS == ["base/parley.yaml", "components/gpu/parley.yaml"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_valid_and_consistent(overlay):
    assert shipped_problems(K8S / "overlays" / overlay) == []


def test_base_is_valid():
    """The base alone (no database yet, the image's bare name) passes every other check."""
    assert shipped_problems(K8S / "base", with_database=False, named_image=False) == []


@pytest.mark.parametrize("parley_yaml", K8S_PARLEY_CONFIGS)
def test_serve_config_v2_is_its_parley_config_rendered(parley_yaml):
    """Each serveConfigV2 in deploy/k8s is what `parley ray render` makes of the parley.yaml beside it, so that the
    two never drift apart (the overlays' builds are checked the same way, in all_problems)."""
    path = K8S / parley_yaml
    home, text = serve_config_home(path)
    config = read_config(path)
    assert drift_problems(yaml.safe_load(text), config, path) == [], home


def test_kustomize_does_not_read_the_parley_configs():
    """parley.yaml is not a Kubernetes object: no kustomization lists it (as a resource, a patch or anything)."""
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "parley.yaml" not in kustomization.read_text().split("#")[0], kustomization
        listed = yaml.safe_load(kustomization.read_text())
        named = [*listed.get("resources", []), *(p.get("path") for p in listed.get("patches", []))]
        assert not any(str(n).endswith("parley.yaml") for n in named), kustomization


def test_what_each_overlay_deploys():
    kinds = {name: sorted(d["kind"] for d in build(K8S / "overlays" / name)) for name in OVERLAYS}
    assert kinds["postgres"] == kinds["gpu"] == ["RayService", "Service", "StatefulSet"]
    assert kinds["external-db"] == ["RayService"]
    for overlay in OVERLAYS:
        (rayservice,) = rayservices(build(K8S / "overlays" / overlay))
        config = parse_serve_config(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
        # the ingress at / (the API and the web UI), one application per model, found by its name's prefix
        assert {a.name: a.route_prefix for a in config.applications} == {
            "parley": "/", f"parley-model-{BUNDLED_MODEL_NAME}": None, f"parley-model-{BUNDLED_EMBEDDING_NAME}": None}
        gpus = [d.get("ray_actor_options", {}).get("num_gpus") for a in config.applications for d in a.deployments]
        assert any(gpus) == (overlay == "gpu"), overlay


def _containers(obj: dict) -> list[dict]:
    if obj["kind"] == "RayService":
        return [ray_container(group) for _, group, _ in ray_groups(obj)]
    if obj["kind"] == "StatefulSet":
        return obj["spec"]["template"]["spec"]["containers"]
    return []


def test_the_example_secret_is_the_one_the_manifests_read():
    """secret.example.yaml is a valid Secret, of the name every container reads, and names each key they read."""
    text = (K8S / "secret.example.yaml").read_text()
    secret = yaml.safe_load(text)
    assert kubernetes_problems(secret) == []
    for overlay in OVERLAYS:
        for container in (c for obj in build(K8S / "overlays" / overlay) for c in _containers(obj)):
            for source in container.get("envFrom", []):
                assert source["secretRef"]["name"] == secret["metadata"]["name"]
            for ref in (e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e):
                assert ref["name"] == secret["metadata"]["name"]
                assert re.search(rf"^\s*#?\s*{ref['key']}:", text, re.M), f"{ref['key']} is not in the example"


def ray_file_problems(raw, text: str, name: str) -> list[str]:
    """A deploy/ray file: parley reads and checks it, its rendering is a Serve config of parley's applications,
    and its replicas fit the `ray start --num-cpus N` that its own comment gives."""
    config, problems = parley_config_problems(raw, name)
    if config is None or problems:
        return problems
    serve, problems = serve_config_problems(ray_config.render(config), f"{name} rendered")
    if serve is None:
        return problems
    cpus = re.search(r"ray start --head --num-cpus (\d+)", text)
    if not cpus:
        return [f"{name} does not say which `ray start` it fits"]
    return placement_problems(serve, [(0.0, float(cpus[1]))], name)


@pytest.mark.parametrize("name", RAY_FILES)
def test_ray_config_file(name):
    """deploy/ray/*.yaml: parley's Ray config, checked, fitting its `ray start`; its comment shows both ways to
    deploy it (`parley ray deploy`, and `parley ray render` for `serve deploy`)."""
    text = (DEPLOY / "ray" / name).read_text()
    assert ray_file_problems(yaml.safe_load(text), text, name) == []
    assert f"parley ray deploy deploy/ray/{name}" in text
    assert f"parley ray render deploy/ray/{name} > serve.yaml && serve deploy serve.yaml" in text


def test_ray_version_is_the_images():
    """rayVersion tells KubeRay which Ray it drives (its probes and defaults depend on it): the image's pin."""
    pinned = re.search(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)[1]
    for directory in [K8S / "base", *(K8S / "overlays" / o for o in OVERLAYS)]:
        for rayservice in rayservices(build(directory)):
            assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == pinned, directory


def test_dockerfile_hands_make_what_the_makefile_takes():
    """The image is not built here; what it hands `make install` is checked against the Makefile and pyproject."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    dockerfile = DOCKERFILE.read_text()
    makefile = (ROOT / "Makefile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    overridable = dict(re.findall(r"^(\w+)\s*\?=\s*(.*)$", makefile, re.M))
    assert re.search(r"^install:", makefile, re.M)
    calls = re.findall(r"make install((?:\s*\\?\n?\s*\w+=(?:'[^']*'|\"[^\"]*\"|[^\s\\]+))+)", dockerfile)
    assert len(calls) == 2, "one `make install` per variant"
    for call in calls:
        given = {k: v.strip("'\"") for k, v in re.findall(r"(\w+)=('[^']*'|\"[^\"]*\"|[^\s\\]+)", call)}
        assert set(given) <= set(overridable), f"not a Makefile variable: {set(given) - set(overridable)}"
        assert set(given["EXTRAS"].split(",")) <= set(extras)
        assert {"ray", "llamacpp", "embeddings", "knowledge"} <= set(given["EXTRAS"].split(","))
        assert set(re.findall(r"\$\((\w+)\)", call)) <= set(overridable)
        if "LLAMA_CMAKE_ARGS" in given:  # the CUDA build keeps the Makefile's portable flags, and adds CUDA's
            assert given["LLAMA_CMAKE_ARGS"].startswith(overridable["LLAMA_CMAKE_ARGS"].strip())
            assert "-DGGML_CUDA=on" in given["LLAMA_CMAKE_ARGS"]
    ray = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M)[1]
    (requirement,) = [Requirement(r) for r in extras["ray"] if Requirement(r).name == "ray"]
    assert requirement.specifier.contains(ray), f"the pinned Ray {ray} is outside parley[ray]'s {requirement}"


# ---- broken copies are refused ------------------------------------------------------------------------------------
#
# Each breaks what `kubectl apply -k overlays/postgres` would send, or base/parley.yaml. A broken parley.yaml that
# parley still renders is rendered into serveConfigV2 (as the README's flow does), so the check that catches it is
# the one meant, not the drift between the two; one that parley refuses to render leaves serveConfigV2 as it was.

def _rayservice(docs):
    return rayservices(docs)[0]


def _kind(docs, kind):
    return next(d for d in docs if d["kind"] == kind)


def _parley(change):
    """A break of parley.yaml, then `parley ray render` pasted into serveConfigV2 where parley renders it."""
    def breaks(docs, parley):
        change(parley)
        try:
            rendered = ray_config.render(parse_config(parley))
        except ParleyError:
            return
        _rayservice(docs)["spec"]["serveConfigV2"] = yaml.safe_dump(rendered, sort_keys=False)
    return breaks


def _serve_config(change):
    """A break of serveConfigV2 alone (edited by hand), parley.yaml left as it is."""
    def breaks(docs, _):
        config = yaml.safe_load(_rayservice(docs)["spec"]["serveConfigV2"])
        change(config)
        _rayservice(docs)["spec"]["serveConfigV2"] = yaml.safe_dump(config, sort_keys=False)
    return breaks


def _misspelled_rayservice_field(docs, _):
    cluster = _rayservice(docs)["spec"]["rayClusterConfig"]
    cluster["workerGroupSpec"] = cluster.pop("workerGroupSpecs")


def _unquoted_ray_start_param(docs, _):
    _rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def _misspelled_container_field(docs, _):
    container = ray_container(_rayservice(docs)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0])
    container["envfrom"] = container.pop("envFrom")


def _misspelled_statefulset_field(docs, _):
    spec = _kind(docs, "StatefulSet")["spec"]
    spec["replica"] = spec.pop("replicas")


def _database_port_moved(docs, _):
    _kind(docs, "Service")["spec"]["ports"][0]["port"] = 5433


def _password_defined_after_url(docs, _):
    container = ray_container(_rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"])
    container["env"].reverse()


def _service_to_a_port_the_server_lacks(docs, _):
    _kind(docs, "Service")["spec"]["ports"][0]["targetPort"] = "pg"


def _worker_without_database(docs, _):
    del ray_container(_rayservice(docs)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0])["env"]


def _head_on_another_image(docs, _):
    ray_container(_rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"])["image"] += "-old"


def _chat(parley):
    return parley["models"][0]


def _autoscaled_past_the_cpus(parley):
    del _chat(parley)["num_replicas"]
    _chat(parley)["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 5}  # min fits, max not


def _old_design(config):
    """serveConfigV2 as parley's first Ray design wrote it: one application, `parley.ray.app:build`."""
    config["applications"] = [{"name": "parley", "route_prefix": "/", "import_path": "parley.ray.app:build",
                               "args": {"models": [{"worker": {"engine": "llamacpp"}}]}}]


CHAT_APP = f"parley-model-{BUNDLED_MODEL_NAME}"
BROKEN = {
    "RayService field misspelled": (_misspelled_rayservice_field, "'workerGroupSpec' was unexpected"),
    "rayStartParams value not a string": (_unquoted_ray_start_param, "0 is not of type 'string'"),
    "container field misspelled": (_misspelled_container_field, "'envfrom' was unexpected"),
    "StatefulSet field misspelled": (_misspelled_statefulset_field, "'replica' was unexpected"),
    "worker flag misspelled": (_parley(lambda p: _chat(p)["worker"].update({"model-pth": "x"})),
                               "unknown worker flags: --model-pth x"),
    "worker flag abbreviated": (_parley(lambda p: _chat(p)["worker"].update({"n-thread": 1})),
                                "unknown worker flags: --n-thread 1"),
    "worker flag with its dashes": (_parley(lambda p: _chat(p)["worker"].update({"--engine": "llamacpp"})),
                                    "without the leading '--'"),
    "engine misspelled": (_parley(lambda p: p["models"][1]["worker"].update({"engine": "sentence-transformer"})),
                          "no engine 'sentence-transformer'"),
    "a bundled model by a wrong name": (_parley(lambda p: _chat(p)["worker"].update({"model-path": "bundled"})),
                                "model-path 'bundled' names no bundled model"),
    "web flag value out of its choices": (_parley(lambda p: p["web"].update({"signup": "sometimes"})),
                                          "invalid choice: 'sometimes'"),
    "web flag abbreviated": (_parley(lambda p: p["web"].update({"sign": "open"})), "unknown web flags: --sign"),
    "a Serve config for parley.yaml": (_parley(lambda p: p.update({"applications": []})),
                                       "is a Serve config (it has `applications`)"),
    "Serve listening on localhost": (_parley(lambda p: p["http_options"].update({"host": "127.0.0.1"})),
                                     "http_options.host is 127.0.0.1"),
    "more replicas than CPUs": (_parley(lambda p: _chat(p).update({"num_replicas": 5})),
                                f"no Ray node has room for a replica of {CHAT_APP}/model"),
    "autoscaling past the CPUs": (_parley(_autoscaled_past_the_cpus),
                                  f"no Ray node has room for a replica of {CHAT_APP}/model"),
    "GPU replicas without GPUs": (_parley(lambda p: _chat(p)["ray_actor_options"].update({"num_gpus": 1})),
                                  "(1 CPU, 1 GPU)"),
    "serveConfigV2 edited, not rendered": (
        _serve_config(lambda c: c["applications"][1]["deployments"][0].update({"num_replicas": 1})),
        "run `parley ray render deploy/k8s/base/parley.yaml` and paste its output into serveConfigV2 in "
        "deploy/k8s/base/rayservice.yaml"),
    "serveConfigV2 of the old design": (_serve_config(_old_design), "import_path must be 'parley.ray.app:ingress'"),
    "database Service on another port": (_database_port_moved, "which is no Service here"),
    "database Service to a port the server lacks": (_service_to_a_port_the_server_lacks, "sends to port 'pg'"),
    "worker without the database URL": (_worker_without_database, "cpu: no PARLEY_DB_URL"),
    "password variable after the URL": (_password_defined_after_url, "uses $(POSTGRES_PASSWORD), not defined before"),
    "head and workers on different images": (_head_on_another_image, "head and workers run different images"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_manifest_is_refused(case):
    breaks, expected = BROKEN[case]
    overlay = K8S / "overlays" / "postgres"
    parley_yaml = parley_config_of(overlay)
    docs, parley = build(overlay), yaml.safe_load(parley_yaml.read_text())
    breaks(docs, parley)
    problems = all_problems(docs, (parley_yaml, parley))
    assert any(expected in p for p in problems), problems


def test_broken_ray_config_file_is_refused():
    """A deploy/ray file with a worker flag `parley worker` lacks; one whose replicas outgrow its node; one without
    its `ray start` line."""
    text = (DEPLOY / "ray" / "parley.yaml").read_text()
    config = yaml.safe_load(text)
    config["models"][0]["worker"]["n-thread"] = 1
    assert any("unknown worker flags: --n-thread 1" in p for p in ray_file_problems(config, text, "parley.yaml"))
    config = yaml.safe_load(text)
    problems = ray_file_problems(config, text.replace("--num-cpus 4", "--num-cpus 3"), "parley.yaml")  # 3.5 asked
    assert any("no Ray node has room" in p for p in problems), problems
    assert ray_file_problems(config, "", "parley.yaml") == ["parley.yaml does not say which `ray start` it fits"]
