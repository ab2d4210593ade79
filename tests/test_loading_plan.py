"""How device, dtype, 8-bit and multi-GPU flags become loading arguments (no GPU needed to check)."""

from __future__ import annotations

import pytest

from parley.engines.engine_options import TransformersOptions
from parley.engines.hf.loading import Accelerators, plan_load
from parley.errors import ModelLoadError

CPU_ONLY = Accelerators()
TWO_GPUS = Accelerators(cuda_devices=2, cuda_bf16=True)


def test_auto_picks_the_best_device_and_dtype():
    assert (plan_load(TransformersOptions(), CPU_ONLY).device, plan_load(TransformersOptions(), CPU_ONLY).dtype) == ("cpu", "float32")
    cuda = plan_load(TransformersOptions(), TWO_GPUS)
    assert (cuda.device, cuda.dtype, cuda.from_pretrained["device_map"]) == ("cuda", "bfloat16", {"": 0})
    assert plan_load(TransformersOptions(), Accelerators(cuda_devices=1)).dtype == "float16"  # no bf16 support
    mps = plan_load(TransformersOptions(), Accelerators(mps=True))
    assert (mps.device, mps.dtype, mps.move_to_device) == ("mps", "float16", True)


def test_multi_gpu_spreads_weights_within_the_memory_budget():
    plan = plan_load(TransformersOptions(num_gpus=2, max_gpu_memory="13GiB"), TWO_GPUS)
    assert plan.from_pretrained["device_map"] == "auto"
    assert plan.from_pretrained["max_memory"] == {0: "13GiB", 1: "13GiB"}


def test_cpu_offloading_adds_cpu_memory_to_the_map():
    plan = plan_load(TransformersOptions(cpu_offloading=True, max_gpu_memory="8GiB"), TWO_GPUS)
    assert plan.from_pretrained["device_map"] == "auto"
    assert plan.from_pretrained["max_memory"][0] == "8GiB" and "cpu" in plan.from_pretrained["max_memory"]


def test_8bit_on_cpu_is_the_int8_path():
    plan = plan_load(TransformersOptions(load_8bit=True), CPU_ONLY)
    assert plan.cpu_int8 and "quantization_config" not in plan.from_pretrained


@pytest.mark.parametrize(
    ("options", "acc", "match"),
    [
        (TransformersOptions(device="cuda"), CPU_ONLY, "no CUDA device"),
        (TransformersOptions(num_gpus=2), CPU_ONLY, "needs CUDA"),
        (TransformersOptions(num_gpus=4), TWO_GPUS, "only 2 CUDA"),
        (TransformersOptions(cpu_offloading=True), CPU_ONLY, "needs --device cuda"),
        (TransformersOptions(load_8bit=True), Accelerators(mps=True), "not on mps"),
        (TransformersOptions(load_8bit=True, dtype="bfloat16"), CPU_ONLY, "float32"),
    ],
)
def test_impossible_combinations_are_refused_clearly(options, acc, match):
    with pytest.raises(ModelLoadError, match=match):
        plan_load(options, acc)
