"""2-D toy datasets, each a class-labelled Gaussian mixture (so exact scores exist for all of them).

- ``gmm3``: the CFG paper's Figure 2 set-up, three Gaussians, one class each. Our choice: means on
  an equilateral triangle at radius 1 (angles 90°, 210°, 330°), isotropic std 0.6, equal weights.
  Neighbouring means are √3 ≈ 1.73 apart, about 2.9 std, so the classes overlap and the tilt
  p(x|c)·p(c|x)^w visibly pushes each class away from the others as w grows.
- ``grid25``: the 25-Gaussians of WGAN-GP/DDGAN: points 2·(i, j) + 0.05·ε for i, j ∈ {−2, …, 2},
  divided by 2.828 as DDGAN does; so means (i, j)/√2 (spacing 0.707) and std 0.05/2.828 ≈ 0.0177.
  Labels: 5 classes by row (class = j + 2, the row of the y coordinate), each a 5-mode mixture, so
  guidance acts within a class of several modes; mode coverage still counts the 25 components.
- ``ring8``: 8 Gaussians on a circle of radius √2 (angles k·45°), std 0.1, one class per mode.
"""

from __future__ import annotations

import math

import torch

from guidediff.errors import UsageError
from guidediff.toy.gmm import GaussianMixture


def gmm3() -> GaussianMixture:
    """Three overlapping Gaussians on a triangle (CFG paper, Figure 2)."""
    angles = torch.tensor([90.0, 210.0, 330.0], dtype=torch.float64) * math.pi / 180
    means = torch.stack([angles.cos(), angles.sin()], dim=1)
    covs = (0.6**2) * torch.eye(2, dtype=torch.float64).expand(3, 2, 2)
    return GaussianMixture(means, covs, torch.ones(3), torch.arange(3), name="gmm3")


def grid25() -> GaussianMixture:
    """25 Gaussians on a 5×5 grid (WGAN-GP/DDGAN scaling), 5 classes by row."""
    ticks = torch.arange(-2, 3, dtype=torch.float64)
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    means = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1) * (2 / 2.828)
    std = 0.05 / 2.828
    covs = std**2 * torch.eye(2, dtype=torch.float64).expand(25, 2, 2)
    labels = (gy.reshape(-1) + 2).long()
    return GaussianMixture(means, covs, torch.ones(25), labels, name="grid25")


def ring8() -> GaussianMixture:
    """8 Gaussians on a circle of radius √2, one class each."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], dim=1)
    covs = 0.1**2 * torch.eye(2, dtype=torch.float64).expand(8, 2, 2)
    return GaussianMixture(means, covs, torch.ones(8), torch.arange(8), name="ring8")


DATASETS = {"gmm3": gmm3, "grid25": grid25, "ring8": ring8}


def load_toy(name: str) -> GaussianMixture:
    """The named 2-D dataset as a mixture; an unknown name is a UsageError listing the choices."""
    if name not in DATASETS:
        raise UsageError(f"unknown 2-D dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]()
