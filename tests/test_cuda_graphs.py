"""Sampling through a captured CUDA graph: on the CPU it falls back to the plain loop with a note and
the same samples; on a GPU the replayed trajectory gives the samples of the plain loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from guidediff.nets.unet import UNet
from guidediff.generation import generate
from train_helpers import tiny_config


def _net_and_config():
    config = tiny_config("model.num_classes=3", "model.image_size=8", "model.in_channels=1")
    torch.manual_seed(0)
    return UNet(config.model), config


def _generate(device, cuda_graph, **kw):
    net, config = _net_and_config()
    return generate(net, config, [0, 2], [0.0, 2.0, -1.0], 3, steps=4, device=device, progress=False,
                    cuda_graph=cuda_graph, bf16=False, batch_size=4, **kw)


def test_cpu_falls_back_with_a_note(capsys):
    plain = _generate("cpu", False)
    graphed = _generate("cpu", True)
    assert "sampling without CUDA graphs" in capsys.readouterr().err
    np.testing.assert_array_equal(plain["x"], graphed["x"])
    assert plain["nfe_per_image"] == graphed["nfe_per_image"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_trajectory_equals_plain_loop_on_cuda(capsys):
    plain = _generate("cuda", False)
    graphed = _generate("cuda", True)
    assert "without CUDA graphs" not in capsys.readouterr().err  # the graph really ran
    assert np.abs(plain["x"].astype(int) - graphed["x"].astype(int)).max() <= 1
    assert plain["nfe_per_image"] == pytest.approx(graphed["nfe_per_image"])
    # a second call replays graphs captured for the same shapes and gives the same images again
    again = _generate("cuda", True)
    np.testing.assert_array_equal(graphed["x"], again["x"])


class _HostData(TorchDispatchMode):
    """Records tensors made from host data (aten.lift_fresh): on a GPU each is a host-to-device copy,
    which a CUDA graph capture refuses."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen += func is torch.ops.aten.lift_fresh.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("w", [3.0, -0.5])
def test_a_guided_ddim_trajectory_makes_no_tensor_from_host_data(w):
    from guidediff.guidance import cfg
    from guidediff.samplers import sample_ddim
    from guidediff.schedules import lam_grid, make_schedule

    net, config = _net_and_config()
    lams = lam_grid(make_schedule("cfg"), 4)
    z, c = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    with torch.no_grad(), _HostData() as host:
        sample_ddim(cfg(net, w, null_class=config.model.num_classes), z, lams, c, clip_x=1.0)
    assert host.seen == 0


@pytest.mark.parametrize("w", [3.0, "one per row"])
def test_a_captured_ddim_trajectory_reads_nothing_from_the_device(monkeypatch, w):
    """The trajectory as a capture records it (``capturing()`` true), run on the meta device: there a
    host read of a value (.item(), .tolist(), bool()) fails, and so does mixing in a tensor made on
    the host, as both do inside a CUDA graph capture. A check message built from w.tolist() before
    the check made every capture with one weight per row fall back on the H200."""
    from guidediff import cuda_graphs
    from guidediff.generation import model_lam_grid
    from guidediff.guidance import cfg
    from guidediff.samplers import sample_ddim

    monkeypatch.setattr(cuda_graphs, "capturing", lambda: True)
    net, config = _net_and_config()
    meta = torch.device("meta")
    net = net.to(meta)
    lams = model_lam_grid(config, 4, meta)
    z, c = torch.empty(4, 1, 8, 8, device=meta), torch.empty(4, dtype=torch.long, device=meta)
    weights = torch.empty(4, device=meta) if w == "one per row" else w
    with torch.no_grad():
        x = sample_ddim(cfg(net, weights, null_class=config.model.num_classes), z, lams, c, clip_x=1.0)
    assert x.shape == z.shape and x.device == meta


def test_a_non_finite_weight_per_row_is_refused_in_one_line():
    from guidediff.errors import UsageError
    from guidediff.guidance import cfg
    from guidediff.samplers import sample_ddim
    from guidediff.schedules import lam_grid, make_schedule

    net, config = _net_and_config()
    weights = torch.tensor([1.0, float("nan")])
    with torch.no_grad(), pytest.raises(UsageError, match=r"guidance weight w must be finite, got \[1.0, nan\]"):
        sample_ddim(cfg(net, weights, null_class=config.model.num_classes), torch.randn(2, 1, 8, 8),
                    lam_grid(make_schedule("cfg"), 2), torch.tensor([0, 2]), clip_x=1.0)
