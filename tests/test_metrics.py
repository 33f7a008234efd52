"""Evaluation metrics against closed forms, brute-force references and identities."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from guidediff.errors import UsageError
from guidediff.metrics.class_accuracy import class_accuracy
from guidediff.metrics.features import extract
from guidediff.metrics.fid import fid_from_features, fit_gaussian, frechet_distance
from guidediff.metrics.inception_score import inception_score
from guidediff.metrics.kid import kid, mmd2_unbiased
from guidediff.metrics.precision_recall import precision_recall
from guidediff.nets.fmnist_classifier import FmnistClassifier

TINY = {"widths": [4, 8, 8], "feature_dim": 16}


def _spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def _fid_sqrtm(mu1, s1, mu2, s2):
    """Independent reference: the classic sqrtm(Σ1 Σ2) route, with its usual fix-ups."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        off = 1e-6 * np.eye(len(s1))
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    assert np.abs(covmean.imag).max() < 1e-6
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


# ---------------------------------------------------------------- FID

def test_fid_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(400, 12)) ** 2
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-9)


def test_fid_commuting_diagonal_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 20), rng.uniform(0.1, 3, 20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fid_general_covariances_match_sqrtm_reference():
    rng = np.random.default_rng(2)
    for d in (3, 30):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _spd(rng, d), _spd(rng, d)
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(_fid_sqrtm(mu1, s1, mu2, s2), rel=1e-7)
        # Symmetric in its two arguments, as a distance must be.
        assert ours == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_fid_shifted_copy_is_squared_shift_even_with_dead_units():
    rng = np.random.default_rng(3)
    f = np.maximum(rng.normal(size=(300, 10)), 0)
    f[:, :3] = 0.0  # dead feature units: a singular covariance, as real nets produce
    shift = rng.normal(size=10)
    assert fid_from_features(f, f + shift) == pytest.approx((shift ** 2).sum(), rel=1e-8)


def test_fid_low_rank_covariances_match_sqrtm_reference():
    rng = np.random.default_rng(4)
    s1, s2 = _spd(rng, 16, rank=5), _spd(rng, 16, rank=7)
    mu = np.zeros(16)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(_fid_sqrtm(mu, s1, mu, s2), rel=1e-5)


def test_fit_gaussian_is_float64_unbiased():
    f = np.random.default_rng(5).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = fit_gaussian(f)
    assert mu.dtype == sigma.dtype == np.float64
    centred = f.astype(np.float64) - f.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)


def test_fid_mismatched_statistics_is_usage_error():
    with pytest.raises(UsageError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------- IS

def test_inception_score_bounds_and_hand_example():
    assert inception_score(np.full((50, 10), 0.1)) == pytest.approx(1.0)
    assert inception_score(np.eye(10)[np.arange(100) % 10]) == pytest.approx(10.0)
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    kl1 = np.log(1 / 0.75)
    kl2 = 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)
    assert inception_score(p) == pytest.approx(np.exp((kl1 + kl2) / 2), rel=1e-12)


# ---------------------------------------------------------------- precision / recall

def _pr_brute(real, fake, k=3):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    rr, rf = radii(real), radii(fake)
    d = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    return (d <= rr[None]).any(1).mean(), (d.T <= rf[None]).any(1).mean()


def test_precision_recall_identical_and_far_apart():
    f = np.random.default_rng(6).normal(size=(200, 8))
    assert precision_recall(f, f) == (1.0, 1.0)
    assert precision_recall(f, f + 1000.0) == (0.0, 0.0)


def test_precision_recall_match_brute_force():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(300, 5))
    fake = rng.normal(size=(250, 5)) + 1.0  # shifted: precision and recall both partial
    p, r = precision_recall(real, fake, chunk=64)
    bp, br = _pr_brute(real, fake)
    assert 0.3 < bp < 0.9 and 0.3 < br < 0.9
    assert p == pytest.approx(bp, abs=1 / 250 + 1e-9)  # float32 distances may flip a boundary case
    assert r == pytest.approx(br, abs=1 / 300 + 1e-9)


# ---------------------------------------------------------------- KID

def test_mmd2_unbiased_matches_explicit_double_sum():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    syy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    sxy = sum(k(x[i], y[j]) for i in range(6) for j in range(5)) / 30
    got = mmd2_unbiased(torch.as_tensor(x), torch.as_tensor(y)).item()
    assert got == pytest.approx(sxx + syy - 2 * sxy, rel=1e-12)


def test_kid_near_zero_for_one_distribution_positive_for_shifted():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same, same_std = kid(a, b, num_subsets=30, subset_size=500)
    shifted, _ = kid(a, b + 0.5, num_subsets=30, subset_size=500)
    assert abs(same) < 2e-3 and same_std > 0
    assert shifted > 0.05 and shifted > 20 * abs(same)


# ---------------------------------------------------------------- CAS

def test_class_accuracy_hand_example():
    probs = np.eye(3)[[0, 1, 1, 2, 0]]
    out = class_accuracy(probs, np.array([0, 1, 2, -1, 0]))
    assert out["overall"] == pytest.approx(3 / 4)
    assert out["per_class"] == {"0": 1.0, "1": 1.0, "2": 0.0}
    assert out["n"] == 4
    assert class_accuracy(probs, np.full(5, -1)) is None
    with pytest.raises(UsageError, match="labels must lie"):
        class_accuracy(probs, np.array([0, 1, 2, 3, 0]))


def test_cas_of_test_set_equals_trained_classifier_test_accuracy(tmp_path):
    from guidediff.classifier_training import train_fmnist_classifier
    from guidediff.data.fmnist import load_fmnist
    from guidediff.nets.fmnist_classifier import load_eval_classifier, read_metadata

    out = tmp_path / "clf.safetensors"
    result = train_fmnist_classifier(out, epochs=2, batch_size=64, lr=3e-3, device="cpu", seed=0,
                                     arch=TINY, train_limit=2000, log=lambda s: None)
    meta = read_metadata(out)
    assert json.loads(meta["config"])["widths"] == TINY["widths"]
    assert meta["test_accuracy"] == f"{result['test_accuracy']:.6f}" and meta["epochs"] == "2"
    assert meta["torch"] == torch.__version__
    assert result["test_accuracy"] > 0.3  # it learned something in 62 steps (chance is 0.1)

    model = load_eval_classifier(out, "cpu")
    images, labels = load_fmnist("test")
    _, probs = extract(images, model)
    assert class_accuracy(probs, labels)["overall"] == result["test_accuracy"]


# ---------------------------------------------------------------- features and classifier

def test_extract_matches_direct_forward_and_validates_input():
    torch.manual_seed(0)
    model = FmnistClassifier(**TINY).eval()
    images = np.random.default_rng(10).integers(0, 256, size=(7, 28, 28, 1), dtype=np.uint8)
    feats, probs = extract(images, model, batch_size=3)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 127.5 - 1
    with torch.no_grad():
        model64 = FmnistClassifier(**TINY).double().eval()
        model64.load_state_dict(model.state_dict())
        np.testing.assert_allclose(feats, model64.features(x).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(probs, torch.softmax(model64(x), 1).numpy(), rtol=1e-4, atol=1e-6)
    assert feats.dtype == np.float64 and feats.shape == (7, 16) and probs.shape == (7, 10)
    with pytest.raises(UsageError, match="Inception"):
        extract(np.zeros((2, 32, 32, 3), np.uint8), model)
    with pytest.raises(UsageError, match="uint8"):
        extract(np.zeros((2, 28, 28, 1), np.float32), model)


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    from guidediff.classifier_training import random_crop

    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    for b in range(2):
        windows = [padded[b, :, i:i + 5, j:j + 5] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)
    # Every one of the 5x5 offsets is drawn: the centre pixel (value 12) stays in view and where it
    # lands names the offset.
    crops = random_crop(x[:1].expand(400, 1, 5, 5), 2, torch.Generator().manual_seed(1))
    offsets = {tuple((c[0] == 12).nonzero()[0].tolist()) for c in crops}
    assert len(offsets) == 25


def test_missing_shipped_classifier_says_how_to_train(monkeypatch, tmp_path):
    import guidediff.nets.fmnist_classifier as fc

    monkeypatch.setattr(fc, "SHIPPED_WEIGHTS", tmp_path / "absent.safetensors")
    with pytest.raises(UsageError, match="train-classifier --out .* --classifier"):
        fc.load_eval_classifier(None)


def test_classifier_file_without_metadata_is_usage_error(tmp_path):
    from safetensors.torch import save_file

    from guidediff.nets.fmnist_classifier import load_classifier

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(UsageError, match="not a guidediff"):
        load_classifier(path)
    path.write_bytes(b"garbage")
    with pytest.raises(UsageError, match="cannot read"):
        load_classifier(path)


# ---------------------------------------------------------------- reference cache

def test_reference_cache_hit_and_corruption_rebuilt(monkeypatch, tmp_path):
    from guidediff.metrics import reference

    monkeypatch.setenv("GUIDEDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(reference.LIMIT_ENV, "500")
    calls = []

    def compute(images):
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, 300:308].astype(np.float64)

    def get():
        return reference.cached_reference("test", "ab" * 32, "fake", compute)

    first = get()
    assert calls == [500] and first.features.shape == (500, 8)
    mu, sigma = fit_gaussian(compute(reference.reference_images("test")))
    np.testing.assert_allclose(first.mu, mu)
    np.testing.assert_allclose(first.sigma, sigma)
    calls.clear()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid entry loads silently
        again = get()
    assert calls == [] and np.array_equal(again.sigma, first.sigma)

    npz = next(tmp_path.glob("reference/*.npz"))
    sidecar = npz.with_suffix(".json")

    def corrupt_and_check(damage, why):
        calls.clear()
        damage()
        with pytest.warns(UserWarning, match=why):
            rebuilt = get()
        assert calls == [500]
        np.testing.assert_allclose(rebuilt.sigma, first.sigma)
        assert get() is not None and calls == [500]  # and the rebuilt entry is valid again

    corrupt_and_check(lambda: npz.write_bytes(npz.read_bytes()[:1000]), "sha256")
    corrupt_and_check(lambda: sidecar.write_text("{not json"), "unusable")

    def wrong_shapes():  # a well-formed npz whose sidecar agrees, but with the wrong arrays
        with open(npz, "wb") as f:
            np.savez(f, mu=np.zeros(3), sigma=np.eye(3), features=np.zeros((500, 3)))
        meta = json.loads(sidecar.read_text())
        meta["npz_sha256"] = reference._sha256_file(npz)
        sidecar.write_text(json.dumps(meta))

    corrupt_and_check(wrong_shapes, "wrong shapes")

    def other_weights():
        meta = json.loads(sidecar.read_text())
        meta["weights_sha256"] = "cd" * 32
        sidecar.write_text(json.dumps(meta))

    corrupt_and_check(other_weights, "weights_sha256")
    corrupt_and_check(sidecar.unlink, "incomplete")


def test_floor_set_is_a_fixed_permutation_of_train():
    from guidediff.data.fmnist import load_fmnist
    from guidediff.metrics.reference import reference_images

    a = reference_images("train10k")
    train, _ = load_fmnist("train")
    assert a.shape == (10_000, 28, 28, 1)
    np.testing.assert_array_equal(a[:, :, :, 0], train[np.random.default_rng(0).permutation(60_000)[:10_000]])
    np.testing.assert_array_equal(a, reference_images("train10k"))


# ---------------------------------------------------------------- Inception (standard FID)

@pytest.fixture(scope="module")
def inception_net():
    from guidediff.metrics.inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    # Calibrate the BN statistics on random images: at default statistics the signal fades through
    # the ~90 random layers and every image gets the same features, which would hide mistakes.
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None  # cumulative average over the calibration batch
    with torch.no_grad():
        net.train()(torch.randn(2, 3, 299, 299))
    for m in bns:
        m.momentum = 0.1
    return net.eval()


def test_inception_without_weights_says_where_to_get_them(tmp_path):
    from guidediff.metrics.inception import WEIGHTS_URL, load_fid_inception

    for path in (None, tmp_path / "missing.pth"):
        with pytest.raises(UsageError, match="--inception-weights PATH") as err:
            load_fid_inception(path)
        assert WEIGHTS_URL in str(err.value) and "\n" not in str(err.value)


def test_inception_architecture_size(inception_net):
    # torchvision's inception_v3 has 27,161,264 parameters; without its aux head (3,326,696) and
    # its 1000-way fc (2,049,000) that leaves the pool3 trunk.
    assert sum(p.numel() for p in inception_net.parameters()) == 27_161_264 - 3_326_696 - 2_049_000


def test_only_the_last_block_max_pools(inception_net):
    # The TF graph's quirk: Mixed_7c pools its side branch with a max, every other block averages.
    blocks = [m for m in inception_net.modules() if hasattr(m, "max_pool")]
    assert [m.max_pool for m in blocks] == [False, True] and blocks[1] is inception_net.Mixed_7c
    x = torch.randn(1, 2048, 8, 8)
    pooled = {}
    inception_net.Mixed_7c.branch_pool.register_forward_hook(lambda m, i, o: pooled.update(x=i[0]))
    with torch.no_grad():
        inception_net.Mixed_7c(x)
    assert torch.equal(pooled["x"], torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1))


def test_tf_average_pool_ignores_padding():
    from guidediff.metrics.inception import _tf_avg_pool

    assert torch.equal(_tf_avg_pool(torch.ones(1, 1, 4, 4)), torch.ones(1, 1, 4, 4))


def test_inception_feature_shapes(inception_net):
    from guidediff.metrics.inception import inception_features

    rng = np.random.default_rng(11)
    gray = rng.integers(0, 256, size=(2, 28, 28, 1), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    fg = inception_features(gray, inception_net, batch_size=2)
    assert fg.shape == (2, 2048) and fg.dtype == np.float64 and np.isfinite(fg).all()
    assert np.abs(fg[0] - fg[1]).max() > 1e-3 * np.abs(fg).max()  # the features see the input
    assert inception_features(rgb, inception_net, batch_size=2).shape == (2, 2048)
    # Grayscale is the same image in three channels.
    np.testing.assert_allclose(inception_features(np.repeat(gray, 3, axis=-1), inception_net), fg,
                               rtol=1e-5, atol=1e-6 * np.abs(fg).max())


def test_inception_state_dict_round_trip(inception_net, tmp_path):
    from safetensors.torch import save_file

    from guidediff.metrics.inception import load_fid_inception

    state = {k: v.clone() for k, v in inception_net.state_dict().items()
             if not k.endswith("num_batches_tracked")}  # as in files from older torch
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    pth = tmp_path / "pt_inception.pth"
    torch.save(state, pth)
    loaded = load_fid_inception(pth)
    for k, v in inception_net.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(loaded.state_dict()[k], v), k
    st = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    assert torch.equal(load_fid_inception(st).Mixed_7c.branch_pool.conv.weight,
                       inception_net.Mixed_7c.branch_pool.conv.weight)

    del state["Mixed_6e.branch7x7_2.conv.weight"]
    torch.save(state, pth)
    with pytest.raises(UsageError, match="missing keys"):
        load_fid_inception(pth)


class _NotATensor:
    pass


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_inception_loader_refuses_pickled_objects(tmp_path):
    from guidediff.metrics.inception import load_fid_inception

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": _NotATensor()}, f)
    with pytest.raises(UsageError, match="safe loader"):
        load_fid_inception(path)
