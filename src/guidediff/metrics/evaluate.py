"""The evaluation harness: every metric of a sample set, in one call, on one set of features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from guidediff.errors import UsageError

METRIC_KEYS = ("n", "fid", "fid_floor", "kid", "is", "cas", "precision", "recall")
REFS = {"test": "test", "train": "train10k"}
PR_K = 3


def _classifier(classifier: torch.nn.Module | str | Path | None, device: torch.device) -> torch.nn.Module:
    if isinstance(classifier, torch.nn.Module):
        return classifier.to(device).eval()
    from guidediff.nets.fmnist_classifier import load_eval_classifier

    return load_eval_classifier(classifier, device)


def inception_fid(images: np.ndarray, net: torch.nn.Module, ref: str = "test", device: str | torch.device = "cpu",
                  data_dir: str | Path | None = None) -> tuple[float, float]:
    """(FID, floor) on the standard Inception pool3 features (`net` from load_fid_inception),
    against a Fashion-MNIST reference set."""
    from guidediff.runtime import resolve_device
    from guidediff.metrics.fid import fit_gaussian, frechet_distance
    from guidediff.metrics.inception import inception_features
    from guidediff.metrics.reference import cached_reference, weights_fingerprint

    device = resolve_device(device)
    fingerprint = weights_fingerprint(net)

    def stats(name: str):
        return cached_reference(name, fingerprint, "inception-v3-pool3",
                                lambda im: inception_features(im, net, device=device),
                                keep_features=False, data_dir=data_dir)

    test, train = stats("test"), stats("train10k")
    ref_stats = test if REFS[ref] == "test" else train
    mu, sigma = fit_gaussian(inception_features(images, net, device=device))
    return frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma), \
        frechet_distance(train.mu, train.sigma, test.mu, test.sigma)


def evaluate_samples(images: np.ndarray, labels: np.ndarray | None = None,
                     classifier: torch.nn.Module | str | Path | None = None, ref: str = "test",
                     device: str | torch.device = "cpu", *, data_dir: str | Path | None = None,
                     inception_weights: str | Path | None = None, batch_size: int = 1000,
                     kid_subsets: int = 100, seed: int = 0) -> dict:
    """FID-FMNIST (with the real-data floor), KID, IS-FMNIST, CAS and precision/recall of samples.

    images: uint8 [N, 28, 28, 1]; labels: int64 [N] (−1 = unconditional) or None; classifier: a
    module, a weights path, or None for the shipped one; ref: "test" (the 10k test images) or
    "train" (the floor's 10k training images). Returns a dict with exactly METRIC_KEYS:
    kid = {"mean", "std"}, cas = {"overall", "per_class", "n"} or None. With inception_weights,
    "fid_inception" and "fid_inception_floor" are added.
    """
    from guidediff.metrics.class_accuracy import class_accuracy
    from guidediff.metrics.features import check_fmnist_images, extract
    from guidediff.runtime import resolve_device
    from guidediff.metrics.fid import fit_gaussian, frechet_distance
    from guidediff.metrics.inception_score import inception_score
    from guidediff.metrics.kid import kid
    from guidediff.metrics.precision_recall import precision_recall
    from guidediff.metrics.reference import classifier_reference

    if ref not in REFS:
        raise UsageError(f"unknown reference {ref!r}; choose one of {', '.join(REFS)}")
    images = check_fmnist_images(images)
    n = len(images)
    if n <= PR_K:
        raise UsageError(f"need more than {PR_K} samples to evaluate, got {n}; generate more")
    device = resolve_device(device)
    model = _classifier(classifier, device)
    inception = None
    if inception_weights is not None:
        from guidediff.metrics.inception import load_fid_inception

        inception = load_fid_inception(inception_weights, device)  # fail before the long part

    features, probs = extract(images, model, batch_size, device)
    test = classifier_reference("test", model, device, data_dir, batch_size)
    train = classifier_reference("train10k", model, device, data_dir, batch_size)
    reference = test if REFS[ref] == "test" else train

    mu, sigma = fit_gaussian(features)
    kid_mean, kid_std = kid(features, reference.features, num_subsets=kid_subsets, seed=seed, device=device)
    precision, recall = precision_recall(reference.features, features, k=PR_K, device=device)
    result = {
        "n": n,
        "fid": frechet_distance(mu, sigma, reference.mu, reference.sigma),
        "fid_floor": frechet_distance(train.mu, train.sigma, test.mu, test.sigma),
        "kid": {"mean": kid_mean, "std": kid_std},
        "is": inception_score(probs),
        "cas": class_accuracy(probs, labels) if labels is not None else None,
        "precision": precision,
        "recall": recall,
    }
    if inception is not None:
        result["fid_inception"], result["fid_inception_floor"] = inception_fid(
            images, inception, ref, device, data_dir)
    return result


def format_summary(result: dict) -> str:
    """One line; every FID carries its real-data floor and the sample count n."""
    n = result["n"]
    # 3 significant digits: FID-FMNIST lives on the classifier's feature scale, often below 1.
    parts = [f"FID-FMNIST {result['fid']:.3g} (floor {result['fid_floor']:.3g}, n={n})"]
    if "fid_inception" in result:
        parts.append(f"FID-Inception {result['fid_inception']:.3g} "
                     f"(floor {result['fid_inception_floor']:.3g}, n={n})")
    parts.append(f"KID-FMNIST {result['kid']['mean']:.4f}±{result['kid']['std']:.4f}")
    parts.append(f"IS-FMNIST {result['is']:.2f}")
    if result["cas"] is not None:
        parts.append(f"CAS {result['cas']['overall']:.1%}")
    parts.append(f"precision {result['precision']:.3f} recall {result['recall']:.3f}")
    return " | ".join(parts)
