"""How well a DDGAN's discriminator tells the real pair (x_{t−1}, x_t) from the generated one at
each denoising level t: its mean logits on both and its accuracy (the share of real pairs with a
positive logit and of generated ones with a negative logit, averaged). The training log's d_real
and d_fake average over the levels, where per-level offsets of D can hide that it separates
nothing, or that it prefers the fakes (accuracy below 0.5). The accuracy at threshold 0 itself
depends on D's offset (a D that ranks every real pair above every generated one, all logits of one
sign, scores 0.5), so each level also gets the AUC: the chance that a real pair's logit exceeds a
generated one's (the Mann–Whitney statistic over n·n pairs), 0.5 when D ranks them alike."""

from __future__ import annotations

from pathlib import Path

import torch

from guidediff.ddgan.schedule import DiscreteVP, forward_pair, posterior_sample


def pairwise_auc(real: torch.Tensor, fake: torch.Tensor) -> float:
    """P(real > fake) + ½·P(real = fake) over all pairs of the two 1-D score sets (U / (n_real·n_fake)
    of the Mann–Whitney test)."""
    real, fake = real.double()[:, None], fake.double()[None, :]
    return float((real > fake).double().mean() + 0.5 * (real == fake).double().mean())


@torch.no_grad()
def discriminator_by_level(G, D, x0: torch.Tensor, c: torch.Tensor | None, lams: torch.Tensor, nz: int,
                           generator: torch.Generator) -> list[dict]:
    """One row per level t = 1 … T for the batch x0: real pairs from q(x_{t−1} | x_0) q(x_t | x_{t−1}),
    generated x′_{t−1} from q(x_{t−1} | x_t, x̂_0 = G(x_t, z, t)), both judged by D at λ_t."""
    b, dev = x0.shape[0], x0.device

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=dev)

    rows = []
    for t in range(1, len(lams)):
        lam_t, lam_s = lams[t].expand(b), lams[t - 1].expand(b)
        x_s, x_t = forward_pair(x0, lam_s, lam_t, randn(*x0.shape), randn(*x0.shape))
        x_fake = posterior_sample(x_t, G(x_t, randn(b, nz), lam_t, c).float(), lam_t, lam_s, randn(*x0.shape))
        d_real, d_fake = D(x_s, x_t, lam_t, c).float(), D(x_fake, x_t, lam_t, c).float()
        rows.append({"t": t, "lam": float(lams[t]), "d_real": float(d_real.mean()), "d_fake": float(d_fake.mean()),
                     "accuracy": float(((d_real > 0).float().mean() + (d_fake < 0).float().mean()) / 2),
                     "auc": pairwise_auc(d_real, d_fake)})
    return rows


def discriminator_report(run_dir: str | Path, n: int = 512, seed: int = 0,
                         device: str | torch.device = "cpu", data_dir: str | Path | None = None) -> list[dict]:
    """``discriminator_by_level`` for the latest checkpoint of a DDGAN run: its raw generator and
    discriminator (the pair that was playing), n training images drawn with ``seed`` from the run's
    dataset (in ``data_dir`` when given, else where the run found it)."""
    from guidediff.checkpoint import check_state_dict
    from guidediff.ddgan.config import DDGANConfig, is_image_folder
    from guidediff.ddgan.train import (adopt_folder_classes, build_networks, load_training_data,
                                       read_ddgan_checkpoint, unprefixed)

    device = torch.device(device)
    _, state, parts = read_ddgan_checkpoint(run_dir, parts=("model",), device=device)
    config = DDGANConfig.from_dict(state["config"], source=str(run_dir))
    if data_dir is not None and is_image_folder(config.data.name):
        config.data.name = str(data_dir)  # the run's image folder, moved
    elif data_dir is not None:
        config.data.data_dir = str(data_dir)
    data = load_training_data(config, device)
    adopt_folder_classes(config, data)  # a moved folder must still hold the run's classes
    G, D = build_networks(config, data.sample_shape, data.num_classes)
    for name, net in (("G", G), ("D", D)):
        tensors = unprefixed(name, parts["model"])
        check_state_dict(tensors, net.state_dict(), f"{run_dir} ({name})")  # a one-line error, not torch's
        net.load_state_dict(tensors)
    G, D = G.to(device).eval(), D.to(device).eval()
    g = torch.Generator(device=device).manual_seed(seed)
    x0, c = data.batch(n, g)
    lams = DiscreteVP.of(config.diffusion).lams(device=device)
    return discriminator_by_level(G, D, x0, c if config.data.conditional else None, lams, config.generator.nz, g)
