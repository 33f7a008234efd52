"""Adapters that let models trained elsewhere (diffusers) run through guidediff's samplers,
guidance methods and evaluation. Each needs its optional dependency only when used."""
