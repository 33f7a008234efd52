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
    "train" (the floor's 10k training images), or a user's image folder (one sub-folder per class):
    the samples (any size, 1 or 3 channels) are then compared with a fixed half of its images at
    the samples' size, the floor is the other half's FID, and ``classifier`` must be the one
    ``train_folder_classifier`` trained on that folder. Returns a dict with exactly METRIC_KEYS:
    kid = {"mean", "std"}, cas = {"overall", "per_class", "n"} or None. With inception_weights,
    "fid_inception" and "fid_inception_floor" are added.
    """
    from guidediff.metrics.class_accuracy import class_accuracy
    from guidediff.metrics.features import check_fmnist_images, check_images, extract
    from guidediff.runtime import resolve_device
    from guidediff.metrics.fid import fit_gaussian, frechet_distance
    from guidediff.metrics.inception_score import inception_score
    from guidediff.metrics.kid import kid
    from guidediff.metrics.precision_recall import precision_recall
    from guidediff.metrics.reference import classifier_reference

    folder = ref not in REFS
    if folder and not Path(str(ref)).expanduser().is_dir():
        raise UsageError(f"unknown reference {ref!r}; choose one of {', '.join(REFS)} or an image folder")
    images = check_images(images) if folder else check_fmnist_images(images)
    n = len(images)
    if n <= PR_K:
        raise UsageError(f"need more than {PR_K} samples to evaluate, got {n}; generate more")
    if folder and classifier is None:
        raise UsageError("a folder reference needs its own evaluation classifier; train one with `guidediff "
                         "train-classifier --data FOLDER --out CLF` and pass --classifier CLF")
    if folder and isinstance(classifier, (str, Path)):
        from guidediff.nets.fmnist_classifier import read_metadata

        trained = read_metadata(classifier).get("resolution")
        if trained is not None and images.shape[1:3] != (int(trained), int(trained)):
            raise UsageError(f"the samples are {images.shape[1]}x{images.shape[2]} but the classifier {classifier} "
                             f"was trained on {trained}x{trained} images of the folder; sample at {trained}x{trained} "
                             "or train a classifier at the samples' size (--resolution)")
    if folder and inception_weights is not None:
        raise UsageError("--inception-weights compares with Fashion-MNIST; leave it out with a folder reference")
    device = resolve_device(device)
    model = _classifier(classifier, device)
    inception = None
    if inception_weights is not None:
        from guidediff.metrics.inception import load_fid_inception

        inception = load_fid_inception(inception_weights, device)  # fail before the long part

    features, probs = extract(images, model, batch_size, device)
    if folder:
        from guidediff.metrics.reference import folder_reference

        halves = folder_reference(ref, images.shape[1], images.shape[3])
        root = str(Path(str(ref)).expanduser().resolve())
        test = classifier_reference(f"{root}-ref", model, device, batch_size=batch_size, images=halves["ref"])
        train = classifier_reference(f"{root}-floor", model, device, batch_size=batch_size, images=halves["floor"])
        reference = test
    else:
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
    if folder:
        result["reference"] = root  # features of the folder's own classifier, not FMNIST's
    if inception is not None:
        result["fid_inception"], result["fid_inception_floor"] = inception_fid(
            images, inception, ref, device, data_dir)
    return result


def feature_tag(result: dict) -> str:
    """The metrics' honest name suffix: FMNIST, or FOLDER for a folder's own classifier."""
    return "FOLDER" if "reference" in result else "FMNIST"


def format_summary(result: dict) -> str:
    """One line; every FID carries its real-data floor and the sample count n."""
    n = result["n"]
    tag = feature_tag(result)
    # 3 significant digits: FID-FMNIST lives on the classifier's feature scale, often below 1.
    parts = [f"FID-{tag} {result['fid']:.3g} (floor {result['fid_floor']:.3g}, n={n})"]
    if "fid_inception" in result:
        parts.append(f"FID-Inception {result['fid_inception']:.3g} "
                     f"(floor {result['fid_inception_floor']:.3g}, n={n})")
    parts.append(f"KID-{tag} {result['kid']['mean']:.4f}±{result['kid']['std']:.4f}")
    parts.append(f"IS-{tag} {result['is']:.2f}")
    if result["cas"] is not None:
        parts.append(f"CAS {result['cas']['overall']:.1%}")
    parts.append(f"precision {result['precision']:.3f} recall {result['recall']:.3f}")
    return " | ".join(parts)
