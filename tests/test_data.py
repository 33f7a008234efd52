"""Image data layer: idx parsing, Fashion-MNIST discovery, image folders, stacking, tensors."""

from __future__ import annotations

import gzip
import os
import struct
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guidediff.data import fmnist, imagefolder
from guidediff.data.fmnist import read_idx
from guidediff.data.images import (
    ImageDataset,
    load_dataset,
    random_hflip,
    to_float,
    to_tensor_dataset,
    to_uint8,
)
from guidediff.data.imagefolder import load_image_folder
from guidediff.data.stacked import make_stacked_fmnist
from guidediff.errors import UsageError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never read or write the real user cache or data dir from a test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("GUIDEDIFF_DATA_DIR", raising=False)


def write_idx(path: Path, arr: np.ndarray, type_byte: int, compress: bool = True) -> None:
    """An idx file written from the format's definition with struct, independent of read_idx."""
    header = bytes([0, 0, type_byte, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_fake_fmnist(folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 0x08)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x08)
        data[split] = (images, labels)
    return data


# ---- idx parser -----------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    i32 = rng.integers(-(2**31), 2**31 - 1, size=(6, 2), dtype=np.int32)
    f64 = rng.standard_normal(7)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"a{suffix}", u8, 0x08, compress)
    write_idx(tmp_path / f"b{suffix}", i32, 0x0C, compress)
    write_idx(tmp_path / f"c{suffix}", f64, 0x0E, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / f"a{suffix}", expected_ndim=3), u8)
    got = read_idx(tmp_path / f"b{suffix}")
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, i32)
    np.testing.assert_array_equal(read_idx(tmp_path / f"c{suffix}"), f64)


def test_idx_rejects_bad_files(tmp_path):
    arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    good = tmp_path / "good.gz"
    write_idx(good, arr, 0x08)

    bad_magic = tmp_path / "magic.gz"
    with gzip.open(bad_magic, "wb") as f:
        f.write(b"\x01\x02\x08\x03" + gzip.decompress(good.read_bytes())[4:])
    short_payload = tmp_path / "short.gz"
    with gzip.open(short_payload, "wb") as f:
        f.write(gzip.decompress(good.read_bytes())[:-7])
    cut_gzip = tmp_path / "cut.gz"
    cut_gzip.write_bytes(good.read_bytes()[:-12])
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"this is not gzip at all")

    for path in (bad_magic, short_payload, cut_gzip, garbage):
        with pytest.raises(UsageError, match=path.name) as info:
            read_idx(path)
        assert "delete it" in str(info.value)
    trailing = tmp_path / "trailing.gz"
    with gzip.open(trailing, "wb") as f:
        f.write(gzip.decompress(good.read_bytes()) + b"\0")
    with pytest.raises(UsageError, match="trailing.gz"):
        read_idx(trailing)
    with pytest.raises(UsageError, match="rank 3, expected 1"):
        read_idx(good, expected_ndim=1)


# ---- Fashion-MNIST discovery and loading ----------------------------------------------------

def test_load_fmnist_from_data_dir_and_subfolder(tmp_path):
    data = write_fake_fmnist(tmp_path / "mine")
    images, labels = fmnist.load_fmnist("test", data_dir=tmp_path / "mine")
    np.testing.assert_array_equal(images, data["test"][0])
    assert labels.dtype == np.int64 and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, data["test"][1])
    assert not images.flags.writeable  # shared through the in-process cache

    # The upstream git checkout keeps them under data/fashion.
    write_fake_fmnist(tmp_path / "repo" / "data" / "fashion", seed=3)
    assert fmnist.find_fmnist_dir(tmp_path / "repo") == tmp_path / "repo" / "data" / "fashion"

    # torchvision leaves them uncompressed under FashionMNIST/raw.
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    write_fake_fmnist(raw, seed=4)
    for gz in raw.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert fmnist.find_fmnist_dir(tmp_path / "tv") == raw
    assert fmnist.load_fmnist("train", tmp_path / "tv")[0].shape == (20, 28, 28)

    with pytest.raises(UsageError, match="split"):
        fmnist.load_fmnist("validation", data_dir=tmp_path / "mine")
    with pytest.raises(UsageError, match="does not exist"):
        fmnist.load_fmnist("train", data_dir=tmp_path / "nowhere")


def test_env_var_is_searched(tmp_path, monkeypatch):
    write_fake_fmnist(tmp_path / "env")
    monkeypatch.setenv("GUIDEDIFF_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "no-system")
    assert fmnist.find_fmnist_dir() == tmp_path / "env"


def test_offline_without_data_names_the_apt_package(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "no-system")
    attempts = []

    def offline(url, dest):
        attempts.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(fmnist, "_fetch", offline)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="dataset-fashion-mnist") as info:
        fmnist.load_fmnist("train", data_dir=tmp_path / "empty")
    assert attempts and "--data-dir" in str(info.value) and "\n" not in str(info.value)


def test_download_checks_md5(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "no-system")
    served = tmp_path / "server"
    data = write_fake_fmnist(served)
    monkeypatch.setattr(fmnist, "_fetch", lambda url, dest: dest.write_bytes((served / url.rsplit("/", 1)[1]).read_bytes()))
    monkeypatch.setattr(fmnist, "MD5", {name: "0" * 32 for name in fmnist.MD5})
    with pytest.raises(UsageError, match="md5"):
        fmnist.find_fmnist_dir()

    monkeypatch.setattr(fmnist, "MD5", {name: fmnist._md5(served / name) for name in fmnist.MD5})
    images, labels = fmnist.load_fmnist("train")
    np.testing.assert_array_equal(images, data["train"][0])
    assert fmnist.find_fmnist_dir() == fmnist.cache_root() / "fashion-mnist"


def test_real_debian_fmnist():
    if fmnist._complete_folder(fmnist.SYSTEM_DIR) is None:
        pytest.skip("dataset-fashion-mnist is not installed")
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = fmnist.load_fmnist(split, data_dir=fmnist.SYSTEM_DIR)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))
        assert images.max() == 255 and images.min() == 0
    assert len(fmnist.FMNIST_CLASSES) == 10


# ---- image folders ------------------------------------------------------------------------

def _save(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_folder(root: Path) -> None:
    # "b_red" sorts after "a_green": class indices follow sorted folder names, not creation order.
    _save(root / "b_red" / "1.png", Image.new("RGB", (40, 30), (255, 0, 0)))
    _save(root / "b_red" / "2.jpg", Image.new("RGB", (17, 50), (255, 0, 0)))
    # Wide image: left and right thirds blue, centre green; the centre crop keeps only green.
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20, 2] = wide[:, 40:, 2] = 255
    wide[:, 20:40, 1] = 255
    _save(root / "a_green" / "wide.png", Image.fromarray(wide))
    _save(root / "a_green" / "gray.png", Image.new("L", (8, 8), 150))
    (root / "a_green" / "notes.txt").write_text("not an image: ignored")


def test_image_folder_shapes_labels_and_modes(tmp_path):
    make_folder(tmp_path / "imgs")
    images, labels, names = load_image_folder(tmp_path / "imgs", resolution=10, channels=3)
    assert names == ["a_green", "b_red"]
    assert images.shape == (4, 10, 10, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])  # gray.png, wide.png, 1.png, 2.jpg
    np.testing.assert_array_equal(images[0], np.full((10, 10, 3), 150))
    # Away from the crop border (filter support), the wide image is pure green.
    np.testing.assert_allclose(images[1, :, 3:7].reshape(-1, 3), [[0, 255, 0]] * 40, atol=2)
    np.testing.assert_allclose(images[2].reshape(-1, 3), [[255, 0, 0]] * 100, atol=0)
    np.testing.assert_allclose(images[3].reshape(-1, 3), [[255, 0, 0]] * 100, atol=3)  # JPEG

    gray, _, _ = load_image_folder(tmp_path / "imgs", resolution=10, channels=1)
    assert gray.shape == (4, 10, 10, 1)
    # ITU-R 601 luma of pure red: 0.299·255 ≈ 76.
    assert abs(int(gray[2].mean()) - 76) <= 1


def test_image_folder_transparency_on_white(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)  # fully transparent black
    _save(tmp_path / "t" / "c" / "a.png", Image.fromarray(rgba, "RGBA"))
    images, _, _ = load_image_folder(tmp_path / "t", resolution=4, channels=3)
    np.testing.assert_array_equal(images, np.full((1, 4, 4, 3), 255))


def test_image_folder_bad_file(tmp_path):
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "b_red" / "broken.png").write_bytes(b"\x89PNG not really")
    good = (tmp_path / "imgs" / "a_green" / "wide.png").read_bytes()
    (tmp_path / "imgs" / "a_green" / "cut.png").write_bytes(good[: len(good) // 2])

    with pytest.raises(UsageError, match="broken.png|cut.png") as info:
        load_image_folder(tmp_path / "imgs", resolution=8, channels=3)
    assert "skip-bad-images" in str(info.value)

    for attempt in range(2):  # the second call is served from the .npz cache and must warn again
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images, labels, _ = load_image_folder(tmp_path / "imgs", resolution=8, channels=3, skip_bad=True)
        assert len(caught) == 1 and "skipped 2 " in str(caught[0].message)
        assert images.shape == (4, 8, 8, 3) and len(labels) == 4


def test_image_folder_cache(tmp_path, monkeypatch):
    make_folder(tmp_path / "imgs")
    first = load_image_folder(tmp_path / "imgs", resolution=6, channels=3)
    monkeypatch.setattr(imagefolder, "_try_load", lambda *a: pytest.fail("decoded despite cache"))
    second = load_image_folder(tmp_path / "imgs", resolution=6, channels=3)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    with pytest.raises(pytest.fail.Exception):  # other settings are other cache entries
        load_image_folder(tmp_path / "imgs", resolution=6, channels=1)
    # A touched file (same size, new mtime) is a cache miss.
    path = tmp_path / "imgs" / "b_red" / "1.png"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(pytest.fail.Exception):
        load_image_folder(tmp_path / "imgs", resolution=6, channels=3)


def test_image_folder_layout_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_image_folder(tmp_path / "missing", 8, 3)
    (tmp_path / "flat").mkdir()
    _save(tmp_path / "flat" / "a.png", Image.new("RGB", (4, 4)))
    with pytest.raises(UsageError, match="no class sub-folders"):
        load_image_folder(tmp_path / "flat", 8, 3)
    (tmp_path / "flat" / "empty_class").mkdir()
    with pytest.raises(UsageError, match="empty_class holds no images"):
        load_image_folder(tmp_path / "flat", 8, 3)
    with pytest.raises(UsageError, match="channels"):
        load_image_folder(tmp_path / "flat", 8, 4)


def test_class_indices_follow_sorted_names(tmp_path):
    order = ["zebra", "mole", "ant", "quail", "cat", "yak"]  # created out of order on purpose
    for i, name in enumerate(order):
        _save(tmp_path / "z" / name / "x.png", Image.new("L", (3, 3), 10 * i))
    images, labels, names = load_image_folder(tmp_path / "z", resolution=3, channels=1, cache=False)
    assert names == sorted(order)
    for image, label in zip(images, labels):
        assert image[0, 0, 0] == 10 * order.index(names[label])


# ---- stacked Fashion-MNIST ------------------------------------------------------------------

def test_stacked_mode_formula():
    # Image i is filled with the value i, so each channel tells which image was drawn.
    n_src = 200
    images = np.broadcast_to(np.arange(n_src, dtype=np.uint8)[:, None, None], (n_src, 28, 28)).copy()
    labels = np.random.default_rng(0).integers(0, 10, n_src)
    x, mode = make_stacked_fmnist(images, labels, n=500, seed=7)
    assert x.shape == (500, 28, 28, 3) and x.dtype == np.uint8 and mode.dtype == np.int64
    drawn = x[:, 0, 0, :].astype(np.int64)
    assert (x == x[:, :1, :1, :]).all()
    expected = [100 * labels[a] + 10 * labels[b] + labels[c] for a, b, c in drawn]
    np.testing.assert_array_equal(mode, expected)
    assert len(np.unique(mode)) > 300  # independent draws reach many of the 1000 modes
    x2, mode2 = make_stacked_fmnist(images, labels, n=500, seed=7)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(make_stacked_fmnist(images, labels, 500, seed=8)[1], mode)


# ---- tensors and augmentation -------------------------------------------------------------

def test_tensor_conversions():
    v = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(2, axis=-1)
    x, y = to_tensor_dataset(v, np.array([3]))
    assert x.shape == (1, 2, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    ref = v.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(x.numpy(), ref, atol=1e-6)
    np.testing.assert_array_equal(to_uint8(x), v)
    assert to_float(v[..., 0]).shape == (1, 1, 16, 16)

    ds = ImageDataset(v, np.array([3]))
    xi, yi = ds[0]
    np.testing.assert_allclose(xi.numpy(), ref[0], atol=1e-6)
    assert yi.item() == 3 and yi.dtype == torch.int64


def test_random_hflip():
    x = torch.randn(64, 3, 5, 7)
    mirrored = x.flip(-1)
    torch.testing.assert_close(random_hflip(x, p=1.0), mirrored)
    torch.testing.assert_close(random_hflip(x, p=0.0), x)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, m) for o, m in zip(out, mirrored)])
    kept = torch.tensor([torch.equal(o, a) for o, a in zip(out, x)])
    assert (flipped ^ kept).all() and 10 < flipped.sum() < 54
    torch.testing.assert_close(out, random_hflip(x, torch.Generator().manual_seed(0)))
    # A column index check, independent of torch.flip: column j becomes column W-1-j.
    assert torch.equal(random_hflip(x, p=1.0)[..., 0], x[..., 6])

    ds = ImageDataset(np.arange(6, dtype=np.uint8).reshape(1, 1, 6).repeat(40, 0), np.zeros(40, int), hflip=True)
    firsts = {round(float(ds[i][0][0, 0, 0]) * 127.5 + 127.5) for i in range(40)}
    assert firsts == {0, 5}


# ---- the entry point ------------------------------------------------------------------------

def test_load_dataset(tmp_path):
    data = write_fake_fmnist(tmp_path / "fm", n_train=30)
    d = load_dataset("fmnist", "train", data_dir=tmp_path / "fm")
    assert d.images.shape == (30, 28, 28, 1) and d.num_classes == 10 and d.channels == 1
    np.testing.assert_array_equal(d.images[..., 0], data["train"][0])

    s = load_dataset("stacked-fmnist", "train", data_dir=tmp_path / "fm")
    assert s.images.shape == (30, 28, 28, 3) and s.num_classes == 1000 and s.labels.max() < 1000

    make_folder(tmp_path / "imgs")
    f = load_dataset(str(tmp_path / "imgs"), resolution=12, channels=1)
    assert f.images.shape == (4, 12, 12, 1) and f.class_names == ["a_green", "b_red"] and f.num_classes == 2

    with pytest.raises(UsageError, match="fmnist, stacked-fmnist"):
        load_dataset("cifar10")
    with pytest.raises(UsageError, match="resolution"):
        load_dataset(str(tmp_path / "imgs"))
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"), resolution=8, channels=3)
    with pytest.raises(UsageError, match="28x28"):
        load_dataset("fmnist", data_dir=tmp_path / "fm", resolution=32)
    with pytest.raises(UsageError, match="test/ sub-folder"):
        load_dataset(str(tmp_path / "imgs"), "test", resolution=8, channels=3)
