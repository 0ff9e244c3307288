"""Labelled images for pretraining, scoring, selection, fine-tuning and accuracy reports.

``load_data(data, input_shape)`` returns a :class:`DataBundle` with three splits:

- ``train``: what ops are distilled and students fine-tuned on (light augmentation on),
- ``val``: held out, only used to report top-1,
- ``calib``: a fixed, class-balanced subset of ``train`` (no augmentation) used to score ops and
  to select among candidate architectures.

``data`` is ``None``/``"digits"`` for the embedded default, scikit-learn's bundled handwritten
digits (1797 8x8 images, nothing downloaded), or a directory in ImageFolder layout
(``root/train/<class>/*.png|jpg``, ``root/val/<class>/...``).  Splits are seeded and
stratified, so the same seed always gives the same images in the same split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lana.errors import LanaError
from lana.spec import Shape

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)
DIGITS_VAL_FRACTION = 0.2  # held-out share of the 1797 digits
CALIB_SIZE = 512  # images in the calib subset (fewer when train is smaller)
MAX_SHIFT = 2  # training augmentation: random translation in pixels (at the model input size)


class DataError(LanaError):
    """A data directory that cannot be used; the message says how to fix it."""


# ---------------------------------------------------------------------------------------------
# Datasets


class TensorImageDataset(Dataset):
    """Images held in memory as one normalised (N, C, H, W) tensor, with integer labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, augment: bool = False,
                 max_shift: int = MAX_SHIFT) -> None:
        self.images = images
        self.labels = labels
        self.augment = augment
        self.max_shift = max_shift

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.augment:
            x = random_shift(x, self.max_shift)
        return x, int(self.labels[i])

    def with_augment(self, augment: bool) -> "TensorImageDataset":
        """The same images with augmentation switched on or off (no copy)."""
        return TensorImageDataset(self.images, self.labels, augment=augment,
                                  max_shift=self.max_shift)

    def subset(self, indices: Sequence[int]) -> "TensorImageDataset":
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return TensorImageDataset(self.images[idx], self.labels[idx], augment=self.augment,
                                  max_shift=self.max_shift)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images and labels at once (no augmentation): fast evaluation on small sets."""
        return self.images, self.labels


class FolderImageDataset(Dataset):
    """Image files read on demand, resized to the model input and normalised."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], input_shape: Shape,
                 mean: Sequence[float], std: Sequence[float], *, augment: bool = False,
                 max_shift: int = MAX_SHIFT) -> None:
        self.files = [Path(f) for f in files]
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.input_shape = tuple(input_shape)
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment = augment
        self.max_shift = max_shift

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = (read_image(self.files[i], self.input_shape) - self.mean) / self.std
        if self.augment:
            x = random_shift(x, self.max_shift)
        return x, int(self.labels[i])

    def with_augment(self, augment: bool) -> "FolderImageDataset":
        return FolderImageDataset(self.files, self.labels.tolist(), self.input_shape,
                                  self.mean.flatten().tolist(), self.std.flatten().tolist(),
                                  augment=augment, max_shift=self.max_shift)

    def subset(self, indices: Sequence[int]) -> "FolderImageDataset":
        return FolderImageDataset([self.files[i] for i in indices],
                                  [int(self.labels[i]) for i in indices], self.input_shape,
                                  self.mean.flatten().tolist(), self.std.flatten().tolist(),
                                  augment=self.augment, max_shift=self.max_shift)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        plain = self.with_augment(False)
        return torch.stack([plain[i][0] for i in range(len(plain))]), self.labels.clone()


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate a (C, H, W) image by up to ``max_shift`` pixels, filling with the edge values."""
    if max_shift <= 0:
        return x
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,)))
    if dy == 0 and dx == 0:
        return x
    m = max_shift
    padded = F.pad(x.unsqueeze(0), (m, m, m, m), mode="replicate").squeeze(0)
    h, w = x.shape[-2:]
    return padded[:, m + dy:m + dy + h, m + dx:m + dx + w]


def read_image(path: Path, input_shape: Shape) -> torch.Tensor:
    """Read one image file as a (C, H, W) float tensor in [0, 1] at the model input size."""
    from PIL import Image

    c, h, w = input_shape
    with Image.open(path) as im:
        im = im.convert("L" if c == 1 else "RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    if x.shape[0] != c:  # e.g. a teacher with 2 or 4 input channels: repeat/cut the planes
        x = x.repeat((c + x.shape[0] - 1) // x.shape[0], 1, 1)[:c]
    return x


# ---------------------------------------------------------------------------------------------
# Bundle


@dataclass(frozen=True)
class DataBundle:
    """The splits of one data source at one input shape."""

    train: Dataset  # augmented training images
    val: Dataset  # held-out images for reported top-1
    calib: Dataset  # class-balanced subset of train, not augmented, for scoring and selection
    num_classes: int
    class_names: tuple[str, ...]
    source: str  # "digits" or the data directory
    input_shape: Shape  # (C, H, W) images are delivered at
    mean: tuple[float, ...] = field(default=())  # per-channel normalisation applied
    std: tuple[float, ...] = field(default=())

    def describe(self) -> str:
        return (f"{self.source}: {len(self.train)} train / {len(self.val)} val / "
                f"{len(self.calib)} calib images, {self.num_classes} classes, "
                f"input {'x'.join(str(v) for v in self.input_shape)}")


def load_data(data: str | Path | None, input_shape: Shape, *, seed: int = 0) -> DataBundle:
    """Load the embedded digits (``None`` or ``"digits"``) or an ImageFolder-style directory.

    Images are resized to ``input_shape`` (C, H, W) and normalised; ``seed`` fixes the splits.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"input shape {input_shape!r} is not (C, H, W); pass e.g. (1, 32, 32)")
    if data is None or str(data) == "digits":
        return load_digits(shape, seed=seed)  # type: ignore[arg-type]
    return load_folder(Path(data), shape, seed=seed)  # type: ignore[arg-type]


def _stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced, seeded subset of ``size`` items (all when fewer)."""
    n = len(labels)
    if size >= n:
        return np.arange(n)
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    if (counts[counts > 0] < 2).any() or size < int((counts > 0).sum()):
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(n, size, replace=False))
    keep, _ = train_test_split(np.arange(n), train_size=size, stratify=labels, random_state=seed)
    return np.sort(keep)


def load_digits(input_shape: Shape = (1, 32, 32), *, seed: int = 0) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits, upsampled (bilinear) to ``input_shape``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    c, h, w = input_shape
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    if (h, w) != (8, 8):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    if c != 1:
        x = x.repeat(1, c, 1, 1)
    mean, std = GRAY_MEAN * c, GRAY_STD * c
    x = (x - 0.5) / 0.5
    y = torch.from_numpy(digits.target.astype(np.int64))
    idx = np.arange(len(y))
    train_idx, val_idx = train_test_split(idx, test_size=DIGITS_VAL_FRACTION,
                                          stratify=digits.target, random_state=seed)
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    calib_idx = train_idx[_stratified_subset(digits.target[train_idx], CALIB_SIZE, seed)]
    t = lambda ids: torch.as_tensor(ids, dtype=torch.long)  # noqa: E731
    train = TensorImageDataset(x[t(train_idx)], y[t(train_idx)], augment=True)
    val = TensorImageDataset(x[t(val_idx)], y[t(val_idx)])
    calib = TensorImageDataset(x[t(calib_idx)], y[t(calib_idx)])
    return DataBundle(train, val, calib, 10, tuple(str(i) for i in range(10)), "digits",
                      (c, h, w), tuple(mean), tuple(std))


def _scan_split(root: Path, split: str) -> tuple[list[str], list[Path], list[int]]:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{str(root)!r} has no {split!r} folder; lay the data out as "
                        f"{root}/train/<class>/*.png and {root}/val/<class>/*.png")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{str(folder)!r} has no class folders; put the images of each class "
                        f"in {folder}/<class>/")
    files: list[Path] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            empty.append(name)
        files += found
        labels += [label] * len(found)
    if empty:
        raise DataError(f"class folder(s) {', '.join(empty)} in {str(folder)!r} hold no images "
                        f"({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}); add images or remove them")
    return classes, files, labels


def _check_readable(files: Sequence[Path]) -> None:
    from PIL import Image, UnidentifiedImageError

    bad = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            bad.append(f)
    if bad:
        names = ", ".join(str(b) for b in bad[:5]) + (f", ... ({len(bad)} in all)"
                                                      if len(bad) > 5 else "")
        raise DataError(f"{len(bad)} unreadable image file(s): {names}; remove or replace them")


def load_folder(root: Path, input_shape: Shape, *, seed: int = 0) -> DataBundle:
    """An ImageFolder-style directory: ``root/train/<class>/*`` and ``root/val/<class>/*``."""
    if not root.exists():
        raise DataError(f"data directory {str(root)!r} does not exist; pass a folder with "
                        f"train/<class>/ and val/<class>/ images, or 'digits' for the embedded set")
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is not a directory; pass a folder with "
                        f"train/<class>/ and val/<class>/ images")
    if not any(root.iterdir()):
        raise DataError(f"data directory {str(root)!r} is empty; put images in "
                        f"{root}/train/<class>/ and {root}/val/<class>/")
    train_classes, train_files, train_labels = _scan_split(root, "train")
    val_classes, val_files, val_labels = _scan_split(root, "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        detail = "; ".join(p for p in (
            f"only in train: {', '.join(only_train)}" if only_train else "",
            f"only in val: {', '.join(only_val)}" if only_val else "") if p)
        raise DataError(f"train has {len(train_classes)} classes but val has {len(val_classes)} "
                        f"({detail}); give train/ and val/ the same class folders")
    _check_readable(train_files + val_files)
    c = input_shape[0]
    mean = IMAGENET_MEAN if c == 3 else GRAY_MEAN * c
    std = IMAGENET_STD if c == 3 else GRAY_STD * c
    train = FolderImageDataset(train_files, train_labels, input_shape, mean, std, augment=True)
    val = FolderImageDataset(val_files, val_labels, input_shape, mean, std)
    calib_idx = _stratified_subset(np.asarray(train_labels), CALIB_SIZE, seed)
    calib = train.with_augment(False).subset(calib_idx.tolist())
    return DataBundle(train, val, calib, len(train_classes), tuple(train_classes), str(root),
                      tuple(input_shape), tuple(mean), tuple(std))
