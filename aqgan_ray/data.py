"""Datasets as seeded, in-memory uint8 splits: train / val / test / calibration.

Every search method scores configs on the same ``val`` split, carved from the *training* set so
that the official test set stays untouched until the final report. Images stay uint8 (4x smaller
than float32, cheap to put in Ray's object store once) and are normalized per batch by
``normalize``.

Fashion-MNIST is the embedded default: it is read straight from its IDX ``.gz`` files, found in
``DataSpec.data_dir``, the Debian package ``dataset-fashion-mnist``, a torchvision cache, or (last)
downloaded by torchvision. CIFAR-10 and ImageNet are read from local copies only.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from aqgan_ray.errors import UserError

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "imagenet")

# Where the Debian package `dataset-fashion-mnist` installs the four IDX files. A module constant so
# tests (and unusual installs) can point it elsewhere.
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Normalization constants are fixed per dataset rather than computed from each split, so a model
# trained once sees identical inputs under every seed, val_size and subset.
# Fashion-MNIST: mean/std of all 60k training pixels (population std), in [0, 1] units.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224
# Input shape (C, H, W) and class count of each dataset, known without reading it: the layer table
# and hardware costs depend only on these and the architecture.
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "imagenet": ((3, IMAGENET_CROP, IMAGENET_CROP), 1000),
}


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, where it lives, and how it is split; the same spec gives the same splits."""

    name: str = "fashion-mnist"
    """One of ``DATASETS``."""
    data_dir: str | None = None
    """User-given directory; None means the default lookup (see ``load_splits``)."""
    val_size: int = 5000
    """Validation images carved from the training set; every search scores configs on them."""
    train_subset: int = 0
    """Training images kept after val is removed; 0 keeps all of them."""
    test_subset: int = 0
    """Seeded, class-balanced subset of the official test set; 0 keeps all of it."""
    calib_size: int = 512
    """Calibration images (activation ranges): the first ones of the train split, so never val."""
    seed: int = 0
    """Seeds the permutation of the training set and the test subset."""

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise UserError(f"unknown dataset {self.name!r}; choose one of: {', '.join(DATASETS)}")
        for size_field in ("val_size", "train_subset", "test_subset", "calib_size"):
            value = getattr(self, size_field)
            if value < 0:
                raise UserError(f"{size_field} = {value} is negative; give a count >= 0")
        if self.val_size == 0:
            raise UserError(
                "val_size = 0: every search scores configs on the validation split; "
                "give val_size >= 1 (e.g. 5000)"
            )
        if self.name == "imagenet" and (self.train_subset == 0 or self.test_subset == 0):
            raise UserError(
                f"imagenet needs train_subset > 0 and test_subset > 0 (got {self.train_subset} "
                f"and {self.test_subset}): splits are materialized as tensors in RAM and all "
                "1.28M training images do not fit; pick e.g. train_subset=10000, test_subset=10000"
            )


@dataclass
class Splits:
    """In-memory splits: uint8 NCHW images, int64 labels, and how to normalize them.

    The ``*_idx`` tensors record which images of the official training set (train, val, calib)
    or test set (test) each split holds, so provenance and disjointness can be checked.
    """

    train_x: Tensor = field(repr=False)
    train_y: Tensor = field(repr=False)
    val_x: Tensor = field(repr=False)
    val_y: Tensor = field(repr=False)
    test_x: Tensor = field(repr=False)
    test_y: Tensor = field(repr=False)
    calib_x: Tensor = field(repr=False)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    input_shape: tuple[int, int, int]
    source: str
    train_idx: Tensor | None = field(default=None, repr=False)
    val_idx: Tensor | None = field(default=None, repr=False)
    calib_idx: Tensor | None = field(default=None, repr=False)
    test_idx: Tensor | None = field(default=None, repr=False)
    calib_y: Tensor | None = field(default=None, repr=False)  # labels (sensitivity's loss)


@lru_cache(maxsize=32)
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """(scale, shift) of shape (C, 1, 1) with ``x * scale + shift == (x/255 - mean) / std``.

    Cached per device so the hot evaluation loop does not rebuild (and re-upload) them per batch.
    """
    std_t = torch.tensor(std, dtype=torch.float64)
    mean_t = torch.tensor(mean, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(torch.float32).view(-1, 1, 1)
    shift = (-mean_t / std_t).to(torch.float32).view(-1, 1, 1)
    return scale.to(device), shift.to(device)


def normalize(x_uint8: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Float32 ``(x/255 - mean) / std`` per channel for a (N, C, H, W) or (C, H, W) uint8 batch.

    One conversion plus one fused multiply-add written into the converted tensor: this runs once
    per batch in the evaluation loop, on whatever device the batch is on.
    """
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects a uint8 image tensor, got {x_uint8.dtype}")
    scale, shift = _affine(tuple(mean), tuple(std), x_uint8.device)
    x = x_uint8.to(torch.float32)
    return torch.addcmul(shift, x, scale, out=x)


def load_splits(spec: DataSpec, cache_dir: Path) -> Splits:
    """Load ``spec.name`` and split it as the spec says.

    ``cache_dir`` holds downloaded or prepared copies (``cache_dir/fashion-mnist``,
    ``cache_dir/cifar10``); nothing else is written.
    """
    cache_dir = Path(cache_dir)
    if spec.name == "fashion-mnist":
        return _load_fashion_mnist(spec, cache_dir)
    if spec.name == "cifar10":
        return _load_cifar10(spec, cache_dir)
    return _load_imagenet(spec)


# --- splitting -----------------------------------------------------------------------------------


def _split_indices(n_train: int, spec: DataSpec) -> tuple[Tensor, Tensor, Tensor]:
    """(val_idx, train_idx, calib_idx) into the official training set.

    A permutation seeded by ``spec.seed``: val is its head, train the rest (optionally cut to
    ``train_subset``), calib the head of train, so val never overlaps train or calib.
    """
    needed = spec.val_size + max(spec.calib_size, spec.train_subset, 1)
    if needed > n_train:
        raise UserError(
            f"{spec.name} has {n_train} training images but val_size={spec.val_size} plus "
            f"max(calib_size={spec.calib_size}, train_subset={spec.train_subset}, 1) needs "
            f"{needed}; lower val_size, calib_size or train_subset"
        )
    gen = torch.Generator().manual_seed(spec.seed)
    perm = torch.randperm(n_train, generator=gen)
    val_idx = perm[: spec.val_size]
    remaining = perm[spec.val_size :]
    train_idx = remaining[: spec.train_subset] if spec.train_subset else remaining
    calib_idx = remaining[: spec.calib_size]
    return val_idx, train_idx, calib_idx


def _test_indices(labels: Tensor, subset: int, seed: int) -> Tensor:
    """Sorted indices of a seeded, class-balanced subset of the test set (all if subset is 0).

    Images are shuffled, ranked within their class, and taken rank by rank, so every class gets
    ``subset / num_classes`` images (up to rounding) as long as it has that many.
    """
    n = len(labels)
    if subset == 0 or subset >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    shuffled = labels[perm]
    by_class = torch.argsort(shuffled, stable=True)
    counts = torch.bincount(shuffled)
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - class_start[shuffled[by_class]]
    chosen = perm[torch.argsort(rank, stable=True)[:subset]]
    return torch.sort(chosen).values


def _make_splits(
    spec: DataSpec,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    source: Path,
) -> Splits:
    """Split fully loaded official train/test tensors (uint8 NCHW images, int64 labels)."""
    val_idx, train_idx, calib_idx = _split_indices(len(train_images), spec)
    test_idx = _test_indices(test_labels, spec.test_subset, spec.seed)
    train_x = train_images[train_idx]
    # calib is the head of the train split: a view, not a second copy, whenever it fits in it.
    calib_x = (
        train_x[: len(calib_idx)] if len(calib_idx) <= len(train_idx) else train_images[calib_idx]
    )
    return Splits(
        train_x=train_x,
        train_y=train_labels[train_idx],
        val_x=train_images[val_idx],
        val_y=train_labels[val_idx],
        test_x=test_images[test_idx],
        test_y=test_labels[test_idx],
        calib_x=calib_x,
        mean=mean,
        std=std,
        num_classes=int(max(train_labels.max(), test_labels.max())) + 1,
        input_shape=tuple(train_images.shape[1:]),
        source=str(source),
        train_idx=train_idx,
        val_idx=val_idx,
        calib_idx=calib_idx,
        test_idx=test_idx,
        calib_y=train_labels[calib_idx],
    )


# --- Fashion-MNIST -------------------------------------------------------------------------------

_IDX_UBYTE = 0x08


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file (gzipped if its name ends in .gz) holding uint8 data of ``ndim`` dims.

    Checks the magic number and that the payload is exactly as long as the header says, so a
    truncated or wrong file fails here with its name rather than as a reshape error later.
    """

    def corrupt(detail: str) -> UserError:
        return UserError(
            f"{path} is not a valid Fashion-MNIST IDX file ({detail}); it is corrupt or truncated: "
            "reinstall it (`apt-get install --reinstall dataset-fashion-mnist`) or delete it and "
            "download the four IDX files again"
        )

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise corrupt(f"cannot decompress: {e}") from e
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise corrupt(f"only {len(raw)} bytes")
    if raw[0:2] != b"\x00\x00" or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise corrupt(
            f"magic number {raw[:4].hex()} is not {_IDX_UBYTE:06x}{ndim:02x} (uint8, {ndim}-D)"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise corrupt(f"header says {dims} = {expected} bytes of data, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Map each Fashion-MNIST file stem to its file in ``folder`` (.gz preferred); list missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for stem in FASHION_MNIST_FILES:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            missing.append(f"{stem}.gz")
    return found, missing


def _fashion_mnist_files(spec: DataSpec, cache_dir: Path) -> tuple[Path, dict[str, Path]]:
    """Find the four IDX files: data_dir, else the Debian package, else the cache, else download.

    An explicit ``data_dir`` is never silently replaced by another copy.
    """
    if spec.data_dir is not None:
        data_dir = Path(spec.data_dir).expanduser()
        if not data_dir.is_dir():
            raise UserError(
                f"data dir {data_dir} does not exist; pass --data-dir a folder holding the four "
                f"Fashion-MNIST IDX files ({', '.join(f + '.gz' for f in FASHION_MNIST_FILES)})"
            )
        for folder in (data_dir, data_dir / "FashionMNIST" / "raw"):
            found, missing = _idx_files(folder)
            if not missing:
                return folder, found
        _, missing = _idx_files(data_dir)
        raise UserError(
            f"data dir {data_dir} lacks Fashion-MNIST files: {', '.join(missing)}; put the four "
            "IDX files there (gzipped or not), or drop --data-dir to use the system copy "
            "(`apt-get install dataset-fashion-mnist`)"
        )

    cache_root = cache_dir / "fashion-mnist"
    cache_raw = cache_root / "FashionMNIST" / "raw"
    for folder in (SYSTEM_FASHION_MNIST_DIR, cache_raw):
        found, missing = _idx_files(folder)
        if not missing:
            return folder, found

    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(root=str(cache_root), train=True, download=True)
    except (RuntimeError, OSError) as e:
        # torchvision's message ends with the last mirror's error, the part worth showing.
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(
            f"Fashion-MNIST not found in {SYSTEM_FASHION_MNIST_DIR} or {cache_raw}, and "
            f"downloading it failed ({reason}); either `apt-get install dataset-fashion-mnist` "
            "or pass --data-dir a folder holding the four IDX files "
            f"({', '.join(f + '.gz' for f in FASHION_MNIST_FILES)})"
        ) from e
    found, missing = _idx_files(cache_raw)
    if missing:
        raise UserError(
            f"torchvision downloaded Fashion-MNIST but {cache_raw} lacks {', '.join(missing)}; "
            "delete that folder and try again, or pass --data-dir"
        )
    return cache_raw, found


def _load_fashion_mnist(spec: DataSpec, cache_dir: Path) -> Splits:
    folder, files = _fashion_mnist_files(spec, cache_dir)
    arrays = {}
    for stem in FASHION_MNIST_FILES:
        arrays[stem] = _read_idx(files[stem], ndim=3 if "images" in stem else 1)
    tensors = []
    for prefix in ("train", "t10k"):
        images = arrays[f"{prefix}-images-idx3-ubyte"]
        labels = arrays[f"{prefix}-labels-idx1-ubyte"]
        if len(images) != len(labels) or (len(labels) and labels.max() > 9):
            raise UserError(
                f"Fashion-MNIST {prefix} files in {folder} disagree: {len(images)} images, "
                f"{len(labels)} labels (max label {labels.max() if len(labels) else None}); "
                "reinstall or re-download the four IDX files together"
            )
        tensors.append(torch.from_numpy(images.copy()).unsqueeze(1))
        tensors.append(torch.from_numpy(labels.astype(np.int64)))
    return _make_splits(
        spec, *tensors, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, source=folder
    )


# --- CIFAR-10 ------------------------------------------------------------------------------------


def _load_cifar10(spec: DataSpec, cache_dir: Path) -> Splits:
    """Read torchvision's CIFAR-10 layout; never downloads (a search must not block on network)."""
    from torchvision.datasets import CIFAR10

    if spec.data_dir is not None:
        root = Path(spec.data_dir).expanduser()
        if root.name == CIFAR10.base_folder:
            root = root.parent
    else:
        root = cache_dir / "cifar10"
    try:
        train = CIFAR10(root=str(root), train=True, download=False)
        test = CIFAR10(root=str(root), train=False, download=False)
    except (RuntimeError, OSError) as e:
        raise UserError(
            f"CIFAR-10 not found (or corrupt) in {root / CIFAR10.base_folder}; download it once "
            f"with `python -c \"import torchvision; torchvision.datasets.CIFAR10('{root}', "
            'download=True)"`, or pass --data-dir a folder holding cifar-10-batches-py'
        ) from e

    def to_tensors(ds: CIFAR10) -> tuple[Tensor, Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(ds.targets, dtype=torch.int64)

    return _make_splits(
        spec,
        *to_tensors(train),
        *to_tensors(test),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        source=root / CIFAR10.base_folder,
    )


# --- ImageNet ------------------------------------------------------------------------------------


def _image_folder(root: Path, transform: Callable) -> ImageFolder:
    """torchvision ImageFolder with its errors turned into ones that say how to fix the layout."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(
            f"{root} is not an ImageFolder ({e}); it needs one subfolder per class holding that "
            "class's images (for the official val set, sort it into class folders first, e.g. "
            "with the widely used valprep.sh)"
        ) from e


def _materialize(dataset: ImageFolder, indices: Tensor, desc: str) -> Tensor:
    """Decode, resize and crop ``dataset[indices]`` into one uint8 (N, 3, 224, 224) tensor."""
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    out = torch.empty((len(indices), 3, IMAGENET_CROP, IMAGENET_CROP), dtype=torch.uint8)
    # Worker processes only pay off when there are enough images to amortize their start-up.
    workers = 0 if len(indices) < 512 else min(8, os.cpu_count() or 1)
    loader = DataLoader(
        Subset(dataset, indices.tolist()), batch_size=64, num_workers=workers, shuffle=False
    )
    pos = 0
    with tqdm(total=len(indices), desc=desc, unit="img") as bar:
        for images, _ in loader:
            out[pos : pos + len(images)] = images
            pos += len(images)
            bar.update(len(images))
    return out


def _load_imagenet(spec: DataSpec) -> Splits:
    """Materialize only the images the splits need; the official val/ set is our test split."""
    from torchvision import transforms

    if spec.data_dir is None:
        raise UserError(
            "imagenet needs --data-dir: a folder with train/ and val/ subfolders, each holding "
            "one folder per class (ImageFolder layout)"
        )
    root = Path(spec.data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"data dir {root} does not exist; pass --data-dir the ImageNet folder")
    absent = [sub for sub in ("train", "val") if not (root / sub).is_dir()]
    if absent:
        raise UserError(
            f"data dir {root} lacks {' and '.join(f'{s}/' for s in absent)}; ImageNet needs "
            "train/ and val/ subfolders, each with one folder per class (ImageFolder layout)"
        )
    transform = transforms.Compose(
        [
            transforms.Resize(IMAGENET_RESIZE),
            transforms.CenterCrop(IMAGENET_CROP),
            transforms.PILToTensor(),
        ]
    )
    train_ds = _image_folder(root / "train", transform)
    test_ds = _image_folder(root / "val", transform)
    if test_ds.classes != train_ds.classes:
        raise UserError(
            f"{root}/train has {len(train_ds.classes)} classes but {root}/val has "
            f"{len(test_ds.classes)} (or differently named ones); both need the same class folders"
        )
    train_labels_all = torch.as_tensor(train_ds.targets, dtype=torch.int64)
    test_labels_all = torch.as_tensor(test_ds.targets, dtype=torch.int64)

    val_idx, train_idx, calib_idx = _split_indices(len(train_ds), spec)
    test_idx = _test_indices(test_labels_all, spec.test_subset, spec.seed)
    # Decode each needed training image once; val, train and calib are then slices of it.
    needed = torch.cat([val_idx, train_idx, calib_idx[len(train_idx) :]])
    decoded = _materialize(train_ds, needed, "imagenet train/val/calib")
    n_val, n_train = len(val_idx), len(train_idx)
    train_x = decoded[n_val : n_val + n_train]
    calib_x = (
        train_x[: len(calib_idx)]
        if len(calib_idx) <= n_train
        else torch.cat([train_x, decoded[n_val + n_train :]])
    )
    return Splits(
        train_x=train_x,
        train_y=train_labels_all[train_idx],
        val_x=decoded[:n_val],
        val_y=train_labels_all[val_idx],
        test_x=_materialize(test_ds, test_idx, "imagenet test"),
        test_y=test_labels_all[test_idx],
        calib_x=calib_x,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_classes=len(train_ds.classes),
        input_shape=(3, IMAGENET_CROP, IMAGENET_CROP),
        source=str(root),
        train_idx=train_idx,
        val_idx=val_idx,
        calib_idx=calib_idx,
        test_idx=test_idx,
        calib_y=train_labels_all[calib_idx],
    )
