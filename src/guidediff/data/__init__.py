"""Datasets: Fashion-MNIST, image folders, stacked Fashion-MNIST (images.py) and 2-D toys (toy2d.py)."""

from guidediff.data.images import DatasetArrays, load_dataset

__all__ = ["DatasetArrays", "load_dataset"]
