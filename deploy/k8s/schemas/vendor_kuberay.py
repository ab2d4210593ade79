"""Write rayservice-<version>.schema.json from KubeRay's RayService CRD (ray.io_rayservices.yaml).

    python deploy/k8s/schemas/vendor_kuberay.py CRD.yaml v1.7.0

CRD.yaml is ray-operator/config/crd/bases/ray.io_rayservices.yaml of the KubeRay release (github.com/ray-project/
kuberay, Apache-2.0). What is kept: the openAPIV3Schema of the `v1` version, as KubeRay wrote it, less
- `status` (written by the operator, never by us), and
- the two pod templates (headGroupSpec.template, workerGroupSpecs[].template): each is core/v1 PodTemplateSpec,
  120 KB of the 155; tests/test_deploy_manifests.py checks them against Kubernetes' own schema (kubernetes_validate)
  instead. They become an object marked "x-parley-pod-template".
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

POD_TEMPLATE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "x-parley-pod-template": True}


def prune(crd: dict) -> dict:
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    schema["properties"].pop("status", None)
    cluster = schema["properties"]["spec"]["properties"]["rayClusterConfig"]["properties"]
    cluster["headGroupSpec"]["properties"]["template"] = POD_TEMPLATE
    cluster["workerGroupSpecs"]["items"]["properties"]["template"] = POD_TEMPLATE
    return schema


def main(crd_path: str, release: str) -> None:
    raw = Path(crd_path).read_bytes()
    schema = prune(yaml.safe_load(raw))
    schema = {"$comment": f"KubeRay {release} RayService CRD (ray.io/v1), openAPIV3Schema less status and pod "
                          f"templates; ray.io_rayservices.yaml sha256 {hashlib.sha256(raw).hexdigest()}; "
                          "Apache-2.0, see LICENSE", **schema}
    out = Path(__file__).with_name(f"rayservice-{release}.schema.json")
    out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
