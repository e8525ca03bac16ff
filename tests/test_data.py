"""Data splits on the real Fashion-MNIST copy, error paths on real files in tmp_path (no mocks)."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from aqgan_ray import data
from aqgan_ray.data import DataSpec, load_splits, normalize
from aqgan_ray.errors import UserError

FMNIST_DIR = data.SYSTEM_FASHION_MNIST_DIR
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist",
)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> data.Splits:
    spec = DataSpec("fashion-mnist", val_size=2000, calib_size=256, seed=0)
    return load_splits(spec, tmp_path_factory.mktemp("cache"))


def _link_fmnist(folder: Path, skip: tuple[str, ...] = ()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in data.FASHION_MNIST_FILES:
        if stem not in skip:
            (folder / f"{stem}.gz").symlink_to(FMNIST_DIR / f"{stem}.gz")


@needs_fmnist
def test_fashion_mnist_shapes_and_sizes(fmnist: data.Splits) -> None:
    assert fmnist.input_shape == (1, 28, 28)
    assert fmnist.num_classes == 10
    assert fmnist.source == str(FMNIST_DIR)
    for x in (fmnist.train_x, fmnist.val_x, fmnist.test_x, fmnist.calib_x):
        assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (1, 28, 28)
    for y in (fmnist.train_y, fmnist.val_y, fmnist.test_y):
        assert y.dtype == torch.int64
    assert len(fmnist.val_x) == len(fmnist.val_y) == 2000
    assert len(fmnist.train_x) == len(fmnist.train_y) == 58000
    assert len(fmnist.test_x) == len(fmnist.test_y) == 10000
    assert len(fmnist.calib_x) == 256
    assert torch.equal(fmnist.test_idx, torch.arange(10000))
    assert set(fmnist.val_y.unique().tolist()) == set(range(10))


@needs_fmnist
def test_splits_are_disjoint_and_match_the_official_images(fmnist: data.Splits) -> None:
    val, train, calib = (
        set(i.tolist()) for i in (fmnist.val_idx, fmnist.train_idx, fmnist.calib_idx)
    )
    assert not val & train and not val & calib
    assert calib <= train
    assert len(val | train) == 60000
    official = torch.from_numpy(
        data._read_idx(FMNIST_DIR / "train-images-idx3-ubyte.gz", ndim=3).copy()
    ).unsqueeze(1)
    assert torch.equal(fmnist.val_x, official[fmnist.val_idx])
    assert torch.equal(fmnist.train_x[:500], official[fmnist.train_idx[:500]])
    assert torch.equal(fmnist.calib_x, official[fmnist.calib_idx])


@needs_fmnist
def test_splits_are_deterministic_per_seed(fmnist: data.Splits, tmp_path: Path) -> None:
    same = load_splits(DataSpec("fashion-mnist", val_size=2000, calib_size=256, seed=0), tmp_path)
    assert torch.equal(same.val_idx, fmnist.val_idx)
    assert torch.equal(same.train_x[:100], fmnist.train_x[:100])
    other = load_splits(DataSpec("fashion-mnist", val_size=2000, calib_size=256, seed=1), tmp_path)
    assert not torch.equal(other.val_idx, fmnist.val_idx)


@needs_fmnist
def test_subsets_are_honored_and_test_subset_is_class_balanced(tmp_path: Path) -> None:
    spec = DataSpec("fashion-mnist", val_size=100, train_subset=300, test_subset=500, calib_size=64)
    splits = load_splits(spec, tmp_path)
    assert (len(splits.val_x), len(splits.train_x), len(splits.calib_x)) == (100, 300, 64)
    assert len(splits.test_x) == len(splits.test_y) == 500
    assert torch.bincount(splits.test_y).tolist() == [50] * 10
    assert len(set(splits.test_idx.tolist())) == 500


@needs_fmnist
def test_normalize_centers_and_scales_the_train_split(fmnist: data.Splits) -> None:
    x = normalize(fmnist.train_x, fmnist.mean, fmnist.std)
    assert x.dtype == torch.float32 and x.shape == fmnist.train_x.shape
    assert abs(x.mean().item()) < 0.01
    assert abs(x.std().item() - 1.0) < 0.01
    batch = fmnist.val_x[:8]
    expected = (batch.float() / 255 - fmnist.mean[0]) / fmnist.std[0]
    torch.testing.assert_close(normalize(batch, fmnist.mean, fmnist.std), expected)


def test_normalize_is_per_channel() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2)
    mean, std = (0.5, 0.0, 1.0), (0.5, 1.0, 0.25)
    out = normalize(x.contiguous(), mean, std)
    expected = torch.tensor([[-1.0, 1.0], [0.0, 1.0], [-4.0, 0.0]])
    torch.testing.assert_close(out[0, :, 0], expected)
    with pytest.raises(TypeError):
        normalize(x.float(), mean, std)


@needs_fmnist
def test_data_dir_accepts_uncompressed_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in data.FASHION_MNIST_FILES:
        if "t10k" in stem:
            (raw / stem).write_bytes(gzip.decompress((FMNIST_DIR / f"{stem}.gz").read_bytes()))
        else:
            (raw / f"{stem}.gz").symlink_to(FMNIST_DIR / f"{stem}.gz")
    splits = load_splits(DataSpec("fashion-mnist", data_dir=str(tmp_path), val_size=10), tmp_path)
    assert splits.source == str(raw)
    assert len(splits.test_x) == 10000


def test_missing_data_dir(tmp_path: Path) -> None:
    spec = DataSpec("fashion-mnist", data_dir=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="does not exist.*--data-dir"):
        load_splits(spec, tmp_path)


@needs_fmnist
def test_data_dir_missing_files_are_named(tmp_path: Path) -> None:
    _link_fmnist(tmp_path / "fm", skip=("t10k-labels-idx1-ubyte",))
    spec = DataSpec("fashion-mnist", data_dir=str(tmp_path / "fm"))
    with pytest.raises(UserError, match=r"lacks .*t10k-labels-idx1-ubyte\.gz") as info:
        load_splits(spec, tmp_path)
    assert "train-images" not in str(info.value)


@needs_fmnist
def test_truncated_gz_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "fm"
    _link_fmnist(folder, skip=("train-labels-idx1-ubyte",))
    good = (FMNIST_DIR / "train-labels-idx1-ubyte.gz").read_bytes()
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz.*corrupt.*reinstall"):
        load_splits(DataSpec("fashion-mnist", data_dir=str(folder)), tmp_path)


def test_wrong_magic_and_short_payload_are_rejected(tmp_path: Path) -> None:
    wrong_magic = tmp_path / "wrong.gz"
    wrong_magic.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 8))
    with pytest.raises(UserError, match="magic number"):
        data._read_idx(wrong_magic, ndim=1)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(UserError, match="5 bytes of data, found 3"):
        data._read_idx(short, ndim=1)


def test_unknown_dataset_and_negative_sizes() -> None:
    with pytest.raises(UserError, match="fashion-mnist, cifar10, imagenet"):
        DataSpec("mnist")
    with pytest.raises(UserError, match="calib_size = -1"):
        DataSpec(calib_size=-1)
    with pytest.raises(UserError, match="val_size"):
        DataSpec(val_size=0)


@needs_fmnist
def test_sizes_that_do_not_fit_the_training_set(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="60000 training images"):
        load_splits(DataSpec(val_size=59990, calib_size=100), tmp_path)


def test_fashion_mnist_download_failure_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.datasets import FashionMNIST

    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-copy")
    # Only the mirror list changes: a closed loopback port refuses at once, no real network.
    monkeypatch.setattr(FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        load_splits(DataSpec("fashion-mnist"), tmp_path / "cache")


def test_cifar10_absent_does_not_download(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cifar10.*download=True.*--data-dir"):
        load_splits(DataSpec("cifar10"), tmp_path)
    assert not any((tmp_path / "cifar10").glob("*.tar.gz"))


def test_imagenet_requires_data_dir_and_layout(tmp_path: Path) -> None:
    spec = DataSpec("imagenet", val_size=1, train_subset=1, test_subset=1, calib_size=1)
    with pytest.raises(UserError, match="needs --data-dir"):
        load_splits(spec, tmp_path)
    (tmp_path / "in" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="lacks val/"):
        load_splits(replace(spec, data_dir=str(tmp_path / "in")), tmp_path)
    with pytest.raises(UserError, match="train_subset > 0 and test_subset > 0"):
        DataSpec("imagenet", data_dir=str(tmp_path), train_subset=0, test_subset=10)


def _fake_imagenet(root: Path, classes: tuple[str, ...], per_class: int) -> None:
    colors = {"n01": (255, 0, 0), "n02": (0, 255, 0), "n03": (0, 0, 255)}
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                # Odd sizes and a grayscale image: resize + crop + RGB conversion must cope.
                mode, color = ("L", 128) if i == 0 else ("RGB", colors[c])
                Image.new(mode, (300 + 13 * i, 260), color).save(folder / f"{i}.png")


def test_imagenet_folder_is_materialized(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    _fake_imagenet(root, ("n01", "n02", "n03"), per_class=4)
    spec = DataSpec(
        "imagenet", data_dir=str(root), val_size=3, train_subset=5, test_subset=6, calib_size=2
    )
    splits = load_splits(spec, tmp_path)
    assert splits.num_classes == 3 and splits.input_shape == (3, 224, 224)
    assert splits.mean == data.IMAGENET_MEAN
    assert tuple(splits.train_x.shape) == (5, 3, 224, 224) and splits.train_x.dtype == torch.uint8
    assert (len(splits.val_x), len(splits.calib_x), len(splits.test_x)) == (3, 2, 6)
    assert torch.bincount(splits.test_y).tolist() == [2, 2, 2]
    assert not set(splits.val_idx.tolist()) & set(splits.train_idx.tolist())
    # Images are solid colors, so every pixel tells which class folder it came from.
    for x, y in ((splits.train_x, splits.train_y), (splits.test_x, splits.test_y)):
        for img, label in zip(x, y, strict=True):
            if img[0].eq(img[1]).all():
                continue  # the grayscale one
            assert img[:, 112, 112].argmax().item() == label.item()


def test_imagenet_flat_val_is_explained(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    (root / "train" / "n01").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "train" / "n01" / "a.png")
    Image.new("RGB", (8, 8)).save(root / "train" / "n01" / "b.png")
    (root / "val").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "flat.png")
    spec = DataSpec(
        "imagenet", data_dir=str(root), val_size=1, train_subset=1, test_subset=1, calib_size=1
    )
    with pytest.raises(UserError, match="not an ImageFolder.*class"):
        load_splits(spec, tmp_path)
