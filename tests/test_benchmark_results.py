"""benchmarks/common.py's output policy: a benchmark checks before its work that it may write its
JSON, and a committed result measured on another device is not replaced by accident."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_common", Path(__file__).resolve().parents[1] / "benchmarks" / "common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_a_result_from_another_device_is_refused_before_the_work(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_OVERWRITE", raising=False)
    (tmp_path / "x.json").write_text(json.dumps({"device": "NVIDIA Z9000"}))
    with pytest.raises(SystemExit, match="measured on NVIDIA Z9000.*BENCH_OVERWRITE=1"):
        common.claim_result("x", str(tmp_path))
    monkeypatch.setenv("BENCH_OVERWRITE", "1")
    assert common.claim_result("x", str(tmp_path)) == tmp_path / "x.json"


def test_an_earlier_result_is_replaced_only_when_resumed_or_told(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_OVERWRITE", raising=False)
    device = common.environment()["device"]
    (tmp_path / "x.json").write_text(json.dumps({"device": device}))  # this machine's own earlier result
    with pytest.raises(SystemExit, match="already holds a result.*BENCH_OVERWRITE=1"):
        common.claim_result("x", str(tmp_path))
    assert common.claim_result("x", str(tmp_path), resume=True) == tmp_path / "x.json"
    with pytest.raises(SystemExit, match="measured on"):  # resuming does not cross devices
        common.claim_result("x", str(tmp_path), resume=True, device="NVIDIA Z9000")
    monkeypatch.setenv("BENCH_OVERWRITE", "1")
    assert common.claim_result("x", str(tmp_path)) == tmp_path / "x.json"


def test_a_merge_keeps_the_measuring_device(tmp_path, monkeypatch):
    """A payload that says it was measured on the GPU may replace that GPU's result from a CPU."""
    monkeypatch.delenv("BENCH_OVERWRITE", raising=False)
    (tmp_path / "x.json").write_text(json.dumps({"device": "NVIDIA Z9000", "v": 1}))
    common.write_result("x", {"device": "NVIDIA Z9000", "v": 2}, str(tmp_path))
    assert json.loads((tmp_path / "x.json").read_text())["v"] == 2
    with pytest.raises(SystemExit, match="measured on NVIDIA Z9000"):
        common.write_result("x", {"v": 3}, str(tmp_path))  # this machine's device, not the H200


def test_an_unusable_results_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="cannot create the results folder.*--out"):
        common.claim_result("x", str(tmp_path / "file" / "sub"))


def test_only_processes_on_our_gpu_count_as_sharing_it():
    # nvidia-smi lists every GPU's processes; a job on the machine's other GPU does not share ours
    smi = ("GPU-aaaa-1111, 705, 1404 MiB\n"
           "GPU-bbbb-2222, 812, 900 MiB\n"
           "GPU-bbbb-2222, 42, 5068 MiB\n")
    assert common.other_processes_on(smi, "bbbb-2222", own_pid=42) == ["812, 900 MiB"]
    assert common.other_processes_on(smi, "GPU-AAAA-1111", own_pid=42) == ["705, 1404 MiB"]
    assert common.other_processes_on(smi, None, own_pid=42) == ["705, 1404 MiB", "812, 900 MiB"]


@pytest.mark.parametrize("text, parsed", [
    ("ddim-u", ("ddim", "u", None, "ddim-u")),
    ("dpmpp-2m-karras@80.0", ("dpmpp-2m", "karras", 80.0, "dpmpp-2m-karras@80")),
    ("unipc-lambda@2.5", ("unipc", "lambda", 2.5, "unipc-lambda@2.5")),
])
def test_sampler_configs_parse_to_one_canonical_name(text, parsed):
    assert common.parse_sampler_config(text) == parsed


@pytest.mark.parametrize("text", ["ddim", "euler-u", "ddim-karras@-1", "heun-karras@x", "unipc-u@inf"])
def test_a_bad_sampler_config_is_refused_in_one_line(text):
    with pytest.raises(SystemExit, match="bad sampler config"):
        common.parse_sampler_config(text)


def test_device_name_says_cpu_for_a_cpu_run_on_a_gpu_machine(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"GPU{index}")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert common.device_name("cpu") == "cpu"
    assert common.device_name(None) == common.device_name("auto") == "GPU0"
    assert common.device_name("cuda") == "GPU0" and common.device_name("cuda:1") == "GPU1"


def test_a_sampler_registered_later_is_a_valid_sampler_config(monkeypatch):
    """The benchmarks read the sampler names from the registry: a new sampler needs no edit here."""
    from guidediff.samplers import SAMPLERS, SamplerSpec

    monkeypatch.setitem(SAMPLERS, "my-solver", SamplerSpec("my-solver", lambda *a, **k: None, (), "test"))
    assert common.parse_sampler_config("my-solver-karras@80") == ("my-solver", "karras", 80.0, "my-solver-karras@80")


def test_gpu_sharing_is_recorded_at_both_ends_of_a_gpu_run_only(monkeypatch):
    snapshots = iter([{"alone": True}, {"alone": False, "other_processes": ["812, 900 MiB"]}])
    asked = []
    monkeypatch.setattr(common, "gpu_sharing", lambda device=None: asked.append(device) or next(snapshots))
    monkeypatch.setattr(common, "device_name", lambda device: "cpu" if str(device) == "cpu" else "NVIDIA Z9000")
    assert common.sharing_began("cpu") is None and common.sharing_record(None, "cpu") is None
    began = common.sharing_began("cuda:1")
    assert common.sharing_record(began, "cuda:1") == {"began": {"alone": True},
                                                      "ended": {"alone": False, "other_processes": ["812, 900 MiB"]}}
    assert asked == ["cuda:1", "cuda:1"]


def test_gpu_sharing_looks_at_the_gpu_it_is_given(monkeypatch):
    """On a machine of several GPUs, a run on cuda:1 is checked on GPU 1, not on the current GPU 0."""
    import types

    import torch

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid=f"uuid-{i}"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: seen.append(("mem", i)) or (90 * 2**30, 100 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 9 * 2**30)
    monkeypatch.setattr(common, "gpu_processes", lambda uuid: seen.append(("procs", uuid)) or [])
    assert common.gpu_sharing("cuda:1")["alone"] is True  # 1 GiB not ours: our own context
    assert seen == [("procs", "uuid-1"), ("mem", 1)]
    seen.clear()
    common.gpu_sharing("cuda")
    assert seen == [("procs", "uuid-0"), ("mem", 0)]
