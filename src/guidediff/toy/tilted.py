"""The tilted density p̃_w(x | c) ∝ p(x | c)·p(c | x)^w that guidance aims at (CFG paper, Figure 2),
on a 2-D grid and by exact sampling.

Guided diffusion applies the tilt to every noised marginal p(z_λ | c)·p(c | z_λ)^w, which is not the
noised version of p̃_w; so even with exact scores the guided sampler does not draw p̃_w for w ≠ 0, −1
(Chidambaram et al. 2024; Bradley & Nakkiran 2024). This module gives the reference to measure it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from guidediff.errors import require
from guidediff.toy.gmm import GaussianMixture


def tilted_log_density(mixture: GaussianMixture, x: Tensor, c: int, w: float) -> Tensor:
    """Unnormalised log p(x | c) + w·log p(c | x) = (1+w)·log p(x|c) − w·log p(x) + w·log p(c)."""
    cls = torch.full((x.shape[0],), int(c), dtype=torch.int64)
    log_cond = mixture.log_prob_data(x, cls)
    log_marg = mixture.log_prob_data(x, torch.full_like(cls, mixture.null_class))
    log_pc = math.log(float(mixture.class_prior()[int(c)]))
    return log_cond + w * (log_cond + log_pc - log_marg)


@dataclass(frozen=True)
class Grid:
    """A regular 2-D grid of cell centres: xs [nx], ys [ny]; ``points`` [ny·nx, 2] in row-major
    (y, x) order, so ``values.reshape(ny, nx)`` is an image with ys along the first axis."""

    xs: Tensor
    ys: Tensor

    @property
    def dx(self) -> float:
        return float(self.xs[1] - self.xs[0])

    @property
    def dy(self) -> float:
        return float(self.ys[1] - self.ys[0])

    @property
    def cell_area(self) -> float:
        return self.dx * self.dy

    @property
    def points(self) -> Tensor:
        gy, gx = torch.meshgrid(self.ys, self.xs, indexing="ij")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x_lo, x_hi, y_lo, y_hi) of the cell edges, for matplotlib's imshow."""
        return (
            float(self.xs[0]) - self.dx / 2,
            float(self.xs[-1]) + self.dx / 2,
            float(self.ys[0]) - self.dy / 2,
            float(self.ys[-1]) + self.dy / 2,
        )


def make_grid(mixture: GaussianMixture, *, margin: float = 5.0, cells_per_std: float = 4.0, max_cells: int = 800) -> Grid:
    """A grid covering every mean ± ``margin`` standard deviations (at least 15% of the means'
    spread), with about ``cells_per_std`` cells across the narrowest component (between 200 and
    ``max_cells`` per side)."""
    require(mixture.dim == 2, f"the tilted-density grid is 2-D; this mixture has dimension {mixture.dim}")
    std_max = float(mixture.eigvals.max().sqrt())
    std_min = float(mixture.eigvals.min().sqrt())
    lo, hi = mixture.means.min(0).values, mixture.means.max(0).values
    # at least 15% of the means' spread as border, so sharp outer modes do not touch the edge
    pad = max(margin * std_max, 0.15 * float((hi - lo).max()))
    lo, hi = lo - pad, hi + pad
    width = float((hi - lo).max())
    n = int(min(max(math.ceil(width / std_min * cells_per_std), 200), max_cells))
    xs = torch.linspace(float(lo[0]), float(hi[0]), n, dtype=torch.float64)
    ys = torch.linspace(float(lo[1]), float(hi[1]), n, dtype=torch.float64)
    return Grid(xs, ys)


def data_log_densities(mixture: GaussianMixture, x: Tensor, *, chunk: int = 1 << 16) -> Tensor:
    """[C + 1, N]: rows log p(x | c) for c = 0..C−1, then log p(x); computed once for a grid and
    reused for every (c, w) of a figure."""
    rows = []
    for c in range(mixture.num_classes + 1):
        parts = [mixture.log_prob_data(x[i : i + chunk], torch.full((len(x[i : i + chunk]),), c)) for i in range(0, len(x), chunk)]
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def tilted_density(
    mixture: GaussianMixture, grid: Grid, c: int, w: float, *, log_densities: Tensor | None = None
) -> Tensor:
    """p̃_w(x | c) on the grid [ny, nx], normalised numerically: Σ density·cell_area = 1.
    ``log_densities`` (from ``data_log_densities(mixture, grid.points)``) saves recomputing them."""
    logs = log_densities if log_densities is not None else data_log_densities(mixture, grid.points)
    log_pc = math.log(float(mixture.class_prior()[int(c)]))
    log_d = logs[int(c)] + w * (logs[int(c)] + log_pc - logs[-1])
    log_d = log_d - torch.logsumexp(log_d, 0) - math.log(grid.cell_area)
    return log_d.exp().reshape(len(grid.ys), len(grid.xs))


def sample_tilted_grid(
    grid: Grid, density: Tensor, n: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """n draws from a grid density: a cell ∝ its mass, then uniform within the cell [n, 2]."""
    probs = density.reshape(-1) / density.sum()
    idx = torch.multinomial(probs, n, replacement=True, generator=generator)
    centres = grid.points[idx]
    jitter = torch.rand(n, 2, dtype=torch.float64, generator=generator) - 0.5
    return centres + jitter * torch.tensor([grid.dx, grid.dy], dtype=torch.float64)


def sample_tilted(
    mixture: GaussianMixture,
    c: int,
    w: float,
    n: int,
    *,
    generator: torch.Generator | None = None,
    grid: Grid | None = None,
    max_rounds: int = 200,
) -> Tensor:
    """n exact draws from p̃_w(x | c) [n, d] float64, by rejection sampling:

    - w ≥ 0: propose from p(x | c), accept with probability p(c | x)^w ≤ 1;
    - −1 ≤ w < 0: p̃_w ∝ p(x)·p(c | x)^{1+w} (Bayes); propose from p(x), accept with p(c | x)^{1+w};
    - w < −1 (tilt unbounded): fall back to the grid sampler (approximate to the cell size).
    """
    if w < -1.0:
        grid = grid if grid is not None else make_grid(mixture)
        return sample_tilted_grid(grid, tilted_density(mixture, grid, c, w), n, generator=generator)
    out: list[Tensor] = []
    have = 0
    batch = max(1024, 2 * n)
    for _ in range(max_rounds):
        if w >= 0:
            x, _ = mixture.sample(batch, classes=torch.tensor(int(c)), generator=generator)
            log_accept = w * _log_class_posterior(mixture, x, c)
        else:
            x, _ = mixture.sample(batch, generator=generator)
            log_accept = (1.0 + w) * _log_class_posterior(mixture, x, c)
        keep = torch.rand(batch, dtype=torch.float64, generator=generator).log() < log_accept
        out.append(x[keep])
        have += int(keep.sum())
        if have >= n:
            return torch.cat(out)[:n]
    # Acceptance too low (extreme w): the grid is a fine approximation in 2-D.
    require(mixture.dim == 2, f"rejection sampling of the tilt w={w} accepted too few draws")
    grid = grid if grid is not None else make_grid(mixture)
    return sample_tilted_grid(grid, tilted_density(mixture, grid, c, w), n, generator=generator)


def _log_class_posterior(mixture: GaussianMixture, x: Tensor, c: int) -> Tensor:
    """log p(c | x) for clean data."""
    cls = torch.full((x.shape[0],), int(c), dtype=torch.int64)
    log_pc = math.log(float(mixture.class_prior()[int(c)]))
    return mixture.log_prob_data(x, cls) + log_pc - mixture.log_prob_data(x, torch.full_like(cls, mixture.null_class))
