"""Tests of the ADM-style UNet (guidediff.nets.unet, guidediff.nets.layers). Tiny widths, CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from guidediff.errors import UsageError
from guidediff.nets.layers import AttentionBlock, lam_features, num_groups
from guidediff.nets.unet import UNet, UNetConfig, UNetEncoder, count_parameters

torch.set_num_threads(1)


def tiny(image_size: int = 28, **kw) -> UNetConfig:
    levels = {28: (1, 2, 2), 32: (1, 2, 2, 2), 64: (1, 2, 2, 2)}[image_size]
    attn = {28: (7,), 32: (8,), 64: (16,)}[image_size]
    cfg = dict(image_size=image_size, in_channels=1, base_channels=32, channel_mult=levels, num_res_blocks=1,
               attention_resolutions=attn, head_channels=16, num_classes=3)
    cfg.update(kw)
    return UNetConfig.from_dict(cfg)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise the zero-initialised tensors (last convs, attention projections, GN biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def inputs(cfg: UNetConfig, b: int = 2, dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, cfg.input_channels, cfg.image_size, cfg.image_size, generator=g, dtype=dtype)
    lam = (torch.rand(b, generator=g, dtype=dtype) * 40 - 20)
    c = torch.randint(0, cfg.num_classes + 1, (b,), generator=g) if cfg.num_classes else None
    return z, lam, c


@pytest.mark.parametrize("size", [28, 32, 64])
def test_output_shape_equals_input_shape(size):
    cfg = tiny(size)
    model = UNet(cfg)
    z, lam, c = inputs(cfg)
    out = model(z, lam, c)
    assert out.shape == z.shape and out.dtype == z.dtype
    # ADM zero-init: a fresh model predicts exactly zero
    assert torch.equal(out, torch.zeros_like(out))


def test_plain_updown_and_extra_input_channels():
    cfg = tiny(28, resblock_updown=False, use_scale_shift_norm=False, extra_input_channels=4, out_channels=2)
    model = perturbed(UNet(cfg))
    z, lam, c = inputs(cfg)
    assert z.shape[1] == 5
    assert model(z, lam, c).shape == (2, 2, 28, 28)


def test_encoder_is_reusable():
    cfg = tiny(32, num_classes=0)
    enc = UNetEncoder(cfg)
    z, lam, _ = inputs(cfg)
    h, skips, emb = enc(z, lam)
    assert h.shape == (2, enc.out_channels, 4, 4) and enc.bottom_resolution == 4
    assert [s.shape[1] for s in skips] == list(enc.skip_channels)
    assert emb.shape == (2, cfg.emb_dim)


def test_class_changes_output_and_null_token_works():
    cfg = tiny(28)
    model = perturbed(UNet(cfg)).eval()
    z, lam, _ = inputs(cfg, b=1)
    outs = [model(z, lam, torch.tensor([k])) for k in range(cfg.num_classes + 1)]
    for i in range(len(outs)):
        for j in range(i):
            assert (outs[i] - outs[j]).abs().max() > 1e-4
    # c=None on a conditional model is the null token
    torch.testing.assert_close(model(z, lam, None), outs[-1], rtol=0, atol=0)
    model.check_inputs(z, lam, torch.tensor([cfg.num_classes]))


@pytest.mark.parametrize("bad", [-1, 4])
def test_check_inputs_rejects_class_out_of_range(bad):
    cfg = tiny(28)  # num_classes 3: valid 0..3, 3 the null token
    model = UNet(cfg)
    z, lam, _ = inputs(cfg, b=2)
    with pytest.raises(UsageError, match="class index"):
        model.check_inputs(z, lam, torch.tensor([0, bad]))


def test_check_inputs_rejects_wrong_shapes():
    cfg = tiny(28)
    model = UNet(cfg)
    z, lam, c = inputs(cfg)
    model.check_inputs(z, lam, c)
    with pytest.raises(UsageError, match="channels"):
        model.check_inputs(torch.randn(2, 3, 28, 28), lam, c)
    with pytest.raises(UsageError, match="28x28"):
        model.check_inputs(torch.randn(2, 1, 32, 32), lam, c)
    with pytest.raises(UsageError, match="lam"):
        model.check_inputs(z, lam[:1], c)
    with pytest.raises(UsageError, match="integer"):
        model.check_inputs(z, lam, c.float())


def test_unconditional_model_ignores_c():
    cfg = tiny(28, num_classes=0)
    model = perturbed(UNet(cfg)).eval()
    assert model.encoder.embed.class_embed is None
    z, lam, _ = inputs(cfg)
    out = model(z, lam)
    torch.testing.assert_close(model(z, lam, torch.tensor([5, 7])), out, rtol=0, atol=0)
    model.check_inputs(z, lam, None)


def test_output_depends_on_lam():
    cfg = tiny(28)
    model = perturbed(UNet(cfg)).eval()
    z, lam, c = inputs(cfg, b=1)
    for other in (lam + 0.1, -lam, torch.tensor([20.0])):
        assert (model(z, lam, c) - model(z, other, c)).abs().max() > 1e-5


def test_lam_features_closed_form():
    lam = torch.tensor([0.0, 1.3, -17.0], dtype=torch.float64)
    f = lam_features(lam, 8)
    k = torch.arange(4, dtype=torch.float64)
    phase = 25.0 * lam[:, None] * 10000.0 ** (-k / 4)
    torch.testing.assert_close(f, torch.cat([phase.cos(), phase.sin()], 1))
    assert lam_features(lam, 7).shape == (3, 7)


def test_batch_equals_single_forwards():
    cfg = tiny(28, dropout=0.3)
    model = perturbed(UNet(cfg)).double().eval()
    z, lam, c = inputs(cfg, b=4, dtype=torch.float64)
    batched = model(z, lam, c)
    singles = torch.cat([model(z[i : i + 1], lam[i : i + 1], c[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, singles, rtol=1e-10, atol=1e-10)


def test_attention_resolution_never_reached():
    with pytest.raises(UsageError, match="never reached"):
        UNet(tiny(28, attention_resolutions=(16,)))
    with pytest.raises(UsageError, match="never reached"):
        UNet(tiny(32, attention_resolutions=(2,)))


def test_bad_image_size():
    with pytest.raises(UsageError, match="not divisible"):
        UNet(tiny(28, channel_mult=(1, 2, 2, 2)))  # 28 -> 14 -> 7 -> 3.5
    with pytest.raises(UsageError, match="head_channels"):
        UNet(tiny(28, head_channels=48))


def test_config_round_trip_through_json():
    cfg = tiny(32, dropout=0.1, extra_input_channels=2)
    model = UNet(cfg)
    d = json.loads(json.dumps(model.config_dict()))
    rebuilt = UNet.from_dict(d)
    assert rebuilt.config == cfg
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert UNetConfig.from_dict(UNetConfig.fmnist().to_dict()) == UNetConfig.fmnist()
    with pytest.raises(UsageError, match="did you mean channel_mult"):
        UNetConfig.from_dict({"channel_mul": [1, 2]})
    with pytest.raises(UsageError, match="wrong type"):
        UNetConfig.from_dict({"channel_mult": "1,2"})


def test_gradient_reaches_every_parameter():
    cfg = tiny(28, dropout=0.1)
    model = perturbed(UNet(cfg)).train()
    z, lam, _ = inputs(cfg, b=3)
    c = torch.tensor([0, 1, cfg.num_classes])
    model(z, lam, c).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing


def test_attention_matches_naive_softmax_float64():
    torch.manual_seed(0)
    ch, heads, hw = 24, 3, 5
    block = perturbed(AttentionBlock(ch, heads)).double()
    x = torch.randn(2, ch, hw, hw, dtype=torch.float64)
    out = block(x)

    d = ch // heads
    n = block.norm(x).flatten(2)  # [B, C, L]
    qkv = torch.einsum("oc,bcl->bol", block.qkv.weight[:, :, 0, 0], n) + block.qkv.bias[None, :, None]
    attended = torch.zeros_like(n)
    for b in range(2):
        for h in range(heads):
            q = qkv[b, h * d : (h + 1) * d].T  # [L, d]
            k = qkv[b, ch + h * d : ch + (h + 1) * d].T
            v = qkv[b, 2 * ch + h * d : 2 * ch + (h + 1) * d].T
            weights = torch.softmax(q @ k.T / math.sqrt(d), dim=-1)
            attended[b, h * d : (h + 1) * d] = (weights @ v).T
    proj = torch.einsum("oc,bcl->bol", block.proj.weight[:, :, 0, 0], attended) + block.proj.bias[None, :, None]
    expected = x + proj.reshape_as(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_channels_last_and_bf16_autocast():
    cfg = tiny(28)
    model = perturbed(UNet(cfg)).eval()
    z, lam, c = inputs(cfg)
    ref = model(z, lam, c)
    model_cl = model.to(memory_format=torch.channels_last)
    out_cl = model_cl(z.to(memory_format=torch.channels_last), lam, c)
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = model_cl(z.to(memory_format=torch.channels_last), lam, c)
    assert out_bf16.dtype == torch.float32
    assert (out_bf16 - ref).abs().max() < 0.1 * ref.abs().max()


def test_compiles_without_graph_breaks():
    # fullgraph=True raises on any graph break; the eager backend only traces (no C++ compile).
    cfg = tiny(28)
    model = perturbed(UNet(cfg)).eval()
    z, lam, c = inputs(cfg)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(z, lam, c), model(z, lam, c))


def test_group_norm_helper_and_presets():
    assert (num_groups(64), num_groups(48), num_groups(7), num_groups(33)) == (32, 24, 7, 11)
    n = count_parameters(UNet(UNetConfig.fmnist()))
    assert 7_000_000 < n < 16_000_000
    for size in (32, 64, 48, 128, 28):
        cfg = UNetConfig.folder(size, 3)
        cfg.validate()
        assert cfg.in_channels == 3 and cfg.image_size == size
