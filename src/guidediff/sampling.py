"""Old name of ``guidediff.generation`` (checkpoint -> samples) and ``guidediff.runtime`` (seeds,
devices), kept so code written against it still imports. New code imports those modules."""

from guidediff.generation import generate, grid_name, initial_noise, plan_guidance, save_grids, save_samples  # noqa: F401
from guidediff.runtime import derive_seed, resolve_device  # noqa: F401
