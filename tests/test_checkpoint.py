"""Checkpoints: atomic writes, keep-last-N, validation of damaged files, RNG and optimizer round
trips, exported models and the shipped-model registry."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from guidediff import checkpoint as ck
from guidediff.loading import load_model
from guidediff.config import load_config
from guidediff.errors import UsageError
from guidediff.nets.unet import UNet
from train_helpers import TINY


def tiny_config():
    return load_config(TINY, ["data.resolution=8", "data.channels=1", "model.num_classes=3"])


def trained_parts(steps: int = 2):
    """A tiny UNet, an EMA copy and an AdamW that has taken some steps."""
    torch.manual_seed(0)
    config = tiny_config()
    net = UNet(config.model)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(steps):
        z = torch.randn(4, 1, 8, 8)
        loss = net(z, torch.zeros(4), torch.zeros(4, dtype=torch.long)).sub(z).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    ema = {k: v * 0.5 for k, v in net.state_dict().items()}
    return config, net, ema, opt


def save(root, step, config, net, ema, opt, keep_last=3):
    state = {"config": config.to_dict(), "optimizer": {"param_names": [n for n, _ in net.named_parameters()]},
             "commands": ["guidediff train test"], "training_time_s": 1.5, **ck.environment()}
    return ck.save_checkpoint(root, step, model=net.state_dict(), ema=ema, optimizer=opt.state_dict(),
                              state=state, keep_last=keep_last)


@pytest.fixture(scope="module")
def parts():
    return trained_parts()


def test_save_and_load_round_trip(tmp_path, parts):
    config, net, ema, opt = parts
    path = save(tmp_path / "checkpoints", 7, config, net, ema, opt)
    assert path.name == "ck" + "pt-0000007" and (tmp_path / "checkpoints" / "latest").read_text().strip() == path.name
    loaded = ck.load_checkpoint(tmp_path)  # a run dir resolves to its latest checkpoint
    assert loaded.step == 7 and loaded.config == config
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.model[k], v)
        assert torch.equal(loaded.ema[k], ema[k])
    fresh = torch.optim.AdamW(UNet(config.model).parameters(), lr=1e-3)
    fresh.load_state_dict(loaded.optimizer_state())
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for key in a["state"][i]:
            assert torch.equal(a["state"][i][key], b["state"][i][key])


def test_interrupted_write_leaves_no_partial_checkpoint(tmp_path, parts, monkeypatch):
    config, net, ema, opt = parts
    root = tmp_path / "checkpoints"
    first = save(root, 1, config, net, ema, opt)
    real = ck._save_tensors
    calls = []

    def failing(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill mid-write")
        real(tensors, path, metadata)

    monkeypatch.setattr(ck, "_save_tensors", failing)
    with pytest.raises(KeyboardInterrupt):
        save(root, 2, config, net, ema, opt)
    assert len(calls) == 2
    assert sorted(p.name for p in root.iterdir()) == [first.name, "latest"]
    assert ck.latest_checkpoint(root) == first
    # a temp dir left by a hard kill is ignored by readers and swept by the next save
    (root / ".tmp-ckpt-0000003-999").mkdir()
    assert [p for _, p in ck.list_checkpoints(root)] == [first]
    monkeypatch.setattr(ck, "_save_tensors", real)
    save(root, 3, config, net, ema, opt)
    assert not list(root.glob(".tmp-*"))


def test_keep_last_n_and_stale_latest_pointer(tmp_path, parts):
    config, net, ema, opt = parts
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4, 5):
        save(root, step, config, net, ema, opt, keep_last=2)
    assert [s for s, _ in ck.list_checkpoints(root)] == [4, 5]
    (root / "latest").write_text("ckpt-0000099\n")  # points nowhere: fall back to the newest
    assert ck.latest_checkpoint(root).name == "ckpt-0000005"
    (root / "latest").unlink()
    assert ck.latest_checkpoint(root).name == "ckpt-0000005"


def test_truncated_file_is_detected_with_the_fix(tmp_path, parts):
    config, net, ema, opt = parts
    root = tmp_path / "checkpoints"
    save(root, 1, config, net, ema, opt)
    second = save(root, 2, config, net, ema, opt)
    target = second / "ema.safetensors"
    size = target.stat().st_size
    with open(target, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(UsageError) as info:
        ck.load_checkpoint(second)
    msg = str(info.value)
    assert "truncated" in msg and f"file has {size - 100}" in msg and f"says {size} bytes" in msg
    assert "resume from the previous one" in msg and "ckpt-0000001" in msg and "\n" not in msg
    with open(target, "r+b") as f:
        f.truncate(5)
    with pytest.raises(UsageError, match="truncated"):
        ck.load_checkpoint(second)


def test_missing_and_garbage_files(tmp_path, parts):
    config, net, ema, opt = parts
    path = save(tmp_path / "checkpoints", 1, config, net, ema, opt)
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(UsageError, match="optimizer.safetensors is missing"):
        ck.load_checkpoint(path)
    ck.load_checkpoint(path, parts=("ema",))  # sampling needs the EMA file alone
    (path / "ema.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(UsageError, match="not a safetensors file"):
        ck.load_checkpoint(path, parts=("ema",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no checkpoint"):
        ck.load_checkpoint(tmp_path / "empty")
    with pytest.raises(UsageError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "missing")
    (path / "state.json").write_text("{")
    with pytest.raises(UsageError, match="state.json is unreadable"):
        ck.load_checkpoint(path, parts=())


def test_missing_keys_and_wrong_shapes(parts):
    config, net, _, _ = parts
    expected = net.state_dict()
    with pytest.raises(UsageError, match=r"missing keys out\.2\.bias"):
        ck.check_state_dict({k: v for k, v in expected.items() if k != "out.2.bias"}, expected, "x")
    bad = dict(expected)
    bad["out.2.weight"] = torch.zeros(3, 3)
    with pytest.raises(UsageError, match=r"wrong shapes out\.2\.weight \(3, 3\) vs"):
        ck.check_state_dict(bad, expected, "x")
    with pytest.raises(UsageError, match="unexpected keys extra"):
        ck.check_state_dict({**expected, "extra": torch.zeros(1)}, expected, "x")
    ck.check_state_dict(expected, expected, "x")


def test_rng_state_round_trip_through_json():
    g = torch.Generator().manual_seed(5)
    state = json.loads(json.dumps(ck.rng_state({"data": g})))

    def draw():
        return (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random(), torch.rand(2, generator=g).tolist())

    first = draw()
    torch.rand(10), np.random.rand(10), random.random(), torch.rand(4, generator=g)  # move every stream on
    ck.set_rng_state(state, {"data": g})
    assert draw() == first


def test_export_and_load_model(tmp_path, parts, monkeypatch):
    config, net, ema, opt = parts
    monkeypatch.setenv("GUIDEDIFF_COMMIT", "abc123")
    path = save(tmp_path / "run" / "checkpoints", 4, config, net, ema, opt)
    out = ck.export_model(tmp_path / "run", tmp_path / "m.safetensors")
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["commit"] == "abc123" and meta["commands"] == ["guidediff train test"] and meta["step"] == 4
    assert meta["config"]["model"]["num_classes"] == 3 and meta["dtype"] == "float16"
    loaded, cfg = load_model(out)
    assert cfg == config
    for k, v in loaded.state_dict().items():  # float16 storage: EMA weights rounded once
        assert torch.equal(v, ema[k].half().float())
    raw, _ = load_model(path, weights="model")
    for k, v in raw.state_dict().items():
        assert torch.equal(v, net.state_dict()[k])
    # a model file with a tensor left out
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    tensors = load_file(out)
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    del tensors["out.2.bias"]
    save_file(tensors, tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(UsageError, match="missing keys out.2.bias"):
        load_model(tmp_path / "bad.safetensors")
    save_file(tensors, tmp_path / "plain.safetensors")
    with pytest.raises(UsageError, match="not a guidediff model"):
        load_model(tmp_path / "plain.safetensors")


def test_shipped_model_names(tmp_path, monkeypatch):
    from guidediff import models

    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(UsageError, match="shipped model fmnist-cfg is not in this install"):
        load_model("fmnist-cfg")
    with pytest.raises(UsageError, match="not a shipped model name"):
        load_model("no-such-model")
    assert models.available() == {}


def test_checkpoint_state_with_a_device_learning_rate_is_saved_as_numbers(tmp_path):
    # a graph-ready run keeps lr as a tensor; the scheduler's state then holds tensors (_last_lr)
    import json

    from guidediff.checkpoint import save_checkpoint

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=torch.tensor(1e-3), foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 0.5)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    sched.step()
    assert any(torch.is_tensor(v) for v in sched.state_dict()["_last_lr"])
    path = save_checkpoint(tmp_path, 1, model=net.state_dict(), ema=net.state_dict(), optimizer=opt.state_dict(),
                           state={"scheduler": sched.state_dict()})
    saved = json.loads((path / "state.json").read_text())
    assert saved["scheduler"]["_last_lr"] == [pytest.approx(5e-4)]
