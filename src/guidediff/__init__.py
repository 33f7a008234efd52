"""guidediff: train, sample and evaluate guided diffusion models."""

__version__ = "0.1.0"
