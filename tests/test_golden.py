"""Golden values: every guidance method and sampler, through the library functions and through
``generate``, and a few training steps of each training path, bit-identical to the values that
tests/golden/make_golden.py stored (CPU, float32, fixed seeds, tiny random models).

A refactor must leave these unchanged. A change that is meant to alter the numbers regenerates
the file (``PYTHONPATH=src python tests/golden/make_golden.py``) and says why in its commit."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import make_golden  # noqa: E402


@pytest.fixture(scope="module")
def values():
    return make_golden.compute()


def test_every_golden_value_is_computed_and_none_is_new(values):
    stored = np.load(make_golden.GOLDEN)
    assert sorted(values) == sorted(stored.files)


@pytest.mark.parametrize("key", sorted(np.load(make_golden.GOLDEN).files))
def test_bit_identical(values, key):
    want = np.load(make_golden.GOLDEN)[key]
    got = values[key]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want), f"{key}: max |diff| {np.abs(got.astype(float) - want.astype(float)).max()}"
