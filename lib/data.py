"""Datasets as uint8 tensors, found offline first, split deterministically, batched on the device.

torchvision's dataset classes read the files (``FashionMNIST``, ``CIFAR10``, ``CIFAR100``, and
``ImageFolder``'s file listing); their ``.data``/``.targets`` become tensors. Why tensors and not a
torchvision ``Dataset`` in a DataLoader: Fashion-MNIST is 47 MB and CIFAR-10 150 MB as uint8, so a
whole split fits in (GPU) memory and shuffling/batching become one index op per batch instead of
thousands of Python calls per epoch (see ``benchmarks/data_loader.py``). What is ours: where the
files are looked for, the one-line errors (a corrupt file is named), the split and the batching.

Where data is looked for, in order:
1. ``<root>/`` in torchvision's on-disk layout (``data/`` by default);
2. a system copy (Debian's ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``);
3. torchvision's download (needs internet, and ``download=True``).
Nothing found is ever deleted: a corrupt file is reported by name and left in place.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST, ImageFolder
from torchvision.datasets.mnist import read_image_file, read_label_file

KNOWN_DATASETS = ("fashion_mnist", "cifar10", "cifar100")
# Training files of the known datasets: (images, channels), for estimates made without the data.
TRAIN_IMAGES_AND_CHANNELS = {"fashion_mnist": (60000, 1), "cifar10": (50000, 3), "cifar100": (50000, 3)}
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_LAYOUT = {  # folder, train files, test files, meta file
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta"),
}


class DatasetError(RuntimeError):
    """Base class: a data problem the user can fix; its message says how."""


class UnknownDatasetError(DatasetError, ValueError):
    pass


class DataNotFoundError(DatasetError, FileNotFoundError):
    pass


class CorruptDataError(DatasetError):
    pass


@dataclass
class Split:
    """Images as uint8 N x C x H x W and labels as int64 N, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    """A dataset's three splits plus what a trainer needs to know about it."""

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]  # per channel, 0-1 units, from the training split only
    std: tuple[float, ...]
    source: str  # where the files were found
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    def to(self, device) -> "Dataset":
        return Dataset(
            self.name,
            self.classes,
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.mean,
            self.std,
            self.source,
            self.extra,
        )


def load_dataset(
    name: str,
    root: str | os.PathLike = "data",
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    download: bool = True,
    image_size: int = 64,
    limit: int | None = None,
) -> Dataset:
    """Load ``name`` (one of ``KNOWN_DATASETS``, or a path to an image folder) as uint8 tensors.

    The training files are split into train/validation, stratified by class, from ``seed``;
    the test split is kept apart for the final evaluation. ``limit`` keeps the first ``limit``
    images per split after splitting (stratified), for smoke runs. ``image_size`` only applies
    to image folders (their images differ in size).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(root)
    key = name.lower().replace("-", "_")
    if key in ("fashionmnist", "fmnist"):
        key = "fashion_mnist"
    if key == "fashion_mnist":
        train_full, test, classes, source = _load_fashion_mnist(root, download)
    elif key in CIFAR_LAYOUT:
        train_full, test, classes, source = _load_cifar(key, root, download)
    elif Path(name).is_dir() or (root / name).is_dir():
        folder = Path(name) if Path(name).is_dir() else root / name
        train_full, test, classes, source = _load_image_folder(folder, image_size, seed)
        key = folder.name
    else:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}: known ones are {', '.join(KNOWN_DATASETS)}, "
            f"or the path of an image folder (one sub-folder per class)"
        )
    for split_name, split in (("training", train_full), ("test", test)):
        check_labels(split, len(classes), f"{source} ({split_name} split)")
    train, val = stratified_split(train_full, val_fraction, seed, classes)
    if limit is not None:
        train, val, test = (_stratified_head(s, limit) for s in (train, val, test))
    mean, std = channel_stats(train.images)
    ds = Dataset(key, tuple(classes), train, val, test, mean, std, source)
    return ds.to(device)


# ---------------------------------------------------------------- splitting and statistics


def known_train_images(name: str, val_fraction: float) -> int | None:
    """Images in a known dataset's training split once the validation split is taken, without the
    data on disk (for estimates); None for a dataset whose size is not known (an image folder)."""
    if name not in TRAIN_IMAGES_AND_CHANNELS:
        return None
    files = TRAIN_IMAGES_AND_CHANNELS[name][0]
    return files - (max(1, round(files * val_fraction)) if val_fraction else 0)


def stratified_split(
    split: Split, val_fraction: float, seed: int, classes: tuple[str, ...] | list[str] | None = None
) -> tuple[Split, Split]:
    """Deterministic per-class split: the same seed gives the same validation images anywhere."""
    if val_fraction == 0:
        return split, Split(split.images[:0], split.labels[:0])
    g = torch.Generator().manual_seed(seed)
    val_idx = []
    for c in torch.unique(split.labels).tolist():
        idx = torch.nonzero(split.labels == c).flatten()
        if len(idx) < 2:
            name = repr(classes[c]) if classes is not None else c
            raise DatasetError(
                f"class {name} has {len(idx)} image: at least 2 per class are needed to keep one "
                f"apart (validation or test)"
            )
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_idx.append(idx[: max(1, round(len(idx) * val_fraction))])
    val_mask = torch.zeros(len(split), dtype=torch.bool)
    val_mask[torch.cat(val_idx)] = True
    return (
        Split(split.images[~val_mask], split.labels[~val_mask]),
        Split(split.images[val_mask], split.labels[val_mask]),
    )


def check_labels(split: Split, num_classes: int, where: str) -> None:
    """Every label names a class: a bad one fails here, not in the middle of an epoch's loss."""
    if len(split) == 0:
        raise DatasetError(f"{where}: no images")
    low, high = int(split.labels.min()), int(split.labels.max())
    if low < 0 or high >= num_classes:
        raise CorruptDataError(
            f"{where}: labels run from {low} to {high}, but there are {num_classes} classes "
            f"(0..{num_classes - 1}); the label file does not match the data"
        )


def _stratified_head(split: Split, limit: int) -> Split:
    """The first ``limit`` images, interleaved by class so every class is represented."""
    if len(split) <= limit:
        return split
    labels = split.labels
    rank = torch.zeros_like(labels)
    for c in torch.unique(labels).tolist():
        m = labels == c
        rank[m] = torch.arange(int(m.sum()))
    order = torch.argsort(rank * (int(labels.max()) + 1) + labels)[:limit]
    order = order.sort().values
    return Split(split.images[order], split.labels[order])


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in 0-1 units, computed in float64 chunks (exact, low memory)."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for chunk in images.split(8192):
        x = chunk.to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3)).cpu()
        total_sq += (x * x).sum(dim=(0, 2, 3)).cpu()
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


# ---------------------------------------------------------------- reading through torchvision


def _read_or_name(read, files: dict[Path, Path], check, what: str):
    """``read()``, a torchvision dataset; if it fails, the error names the first file that ``check``
    (reading that one file) rejects, as ``files`` maps the path read to the path to name (a
    temporary copy to its source), or their folder. torchvision's exceptions name no file."""
    try:
        return read()
    except Exception as e:  # truncated or garbage files raise anything: assertions, view, unpickling errors
        culprit, reason = next(iter(files.values())).parent, e
        for path, named in files.items():
            try:
                check(path)
            except Exception as bad:
                culprit, reason = named, bad
                break
        reason = " ".join(f"{type(reason).__name__}: {reason}".split()).rstrip(": ")[:200]
        raise CorruptDataError(
            f"{culprit}: {what} ({reason}); delete it and load again, or reinstall its source"
        ) from None


# ---------------------------------------------------------------- Fashion-MNIST (idx files)


def _load_fashion_mnist(root: Path, download: bool):
    raw = root / "FashionMNIST" / "raw"
    found, source = _find_idx_files(raw), str(raw)
    if found is None and _find_idx_files(SYSTEM_FASHION_MNIST) is not None:
        found, source = _find_idx_files(SYSTEM_FASHION_MNIST), str(SYSTEM_FASHION_MNIST)
    if found is None:
        _download("fashion_mnist", root, download, [str(raw), str(SYSTEM_FASHION_MNIST)])
        found, source = _find_idx_files(raw), f"{raw} (downloaded)"
    with _torchvision_layout(found, raw, install=source == str(SYSTEM_FASHION_MNIST)) as layout:
        train, test = _read_fashion_mnist(layout, found, train=True), _read_fashion_mnist(layout, found, train=False)
    return train, test, FASHION_MNIST_CLASSES, source


def _read_fashion_mnist(root: Path, found: dict[str, Path], train: bool) -> Split:
    images_name, labels_name = FASHION_MNIST_FILES["train" if train else "test"]
    raw = root / "FashionMNIST" / "raw"
    checks = {raw / images_name: read_image_file, raw / labels_name: read_label_file}
    ds = _read_or_name(
        lambda: FashionMNIST(str(root), train=train),
        {raw / n: found[n] for n in (images_name, labels_name)},
        lambda path: checks[path](str(path)),
        "not a whole idx file: truncated or padded, or no idx header",
    )
    if len(ds.data) != len(ds.targets):
        raise CorruptDataError(
            f"{found[images_name]} and {found[labels_name]} do not match "
            f"(images {tuple(ds.data.shape)}, labels {tuple(ds.targets.shape)})"
        )
    return Split(ds.data.unsqueeze(1), ds.targets)


FASHION_MNIST_HINT = (
    "Fashion-MNIST is not on this machine: apt-get install dataset-fashion-mnist "
    "(or put the idx files in data/FashionMNIST/raw)"
)


def fashion_mnist_available(root: str | os.PathLike = "data") -> bool:
    """True when Fashion-MNIST can be loaded without a download (tests skip otherwise)."""
    return any(_find_idx_files(p) for p in (Path(root) / "FashionMNIST" / "raw", SYSTEM_FASHION_MNIST))


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    """All four files, plain or ``.gz``, or None if any is missing."""
    found = {}
    for names in FASHION_MNIST_FILES.values():
        for n in names:
            for candidate in (folder / n, folder / f"{n}.gz"):
                if candidate.is_file():
                    found[n] = candidate
                    break
            else:
                return None
    return found


@contextlib.contextmanager
def _torchvision_layout(found: dict[str, Path], raw: Path, install: bool):
    """A root whose ``FashionMNIST/raw/`` holds the four files uncompressed, as torchvision reads them:
    the data root itself when they are there, the system copy decompressed into ``raw`` when
    ``install`` (so the next load is direct), else a temporary folder removed after reading (a
    ``.gz`` in ``raw``, or ``raw`` read-only): files of the data root are never changed.

    Debian recompressed the files, so torchvision's md5 check rejects the ``.gz`` as they are;
    decompressed, torchvision loads them without any download.
    """
    if all(path == raw / name for name, path in found.items()):
        yield raw.parents[1]
        return
    if install:
        try:
            _plain_files(found, raw)
        except OSError:  # cannot write there
            pass
        else:
            yield raw.parents[1]
            return
    with tempfile.TemporaryDirectory() as tmp:
        _plain_files(found, Path(tmp) / "FashionMNIST" / "raw")
        yield Path(tmp)


def _plain_files(found: dict[str, Path], raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for name, path in found.items():
        if path == raw / name:
            continue
        try:
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError, zlib.error) as e:
            raise CorruptDataError(
                f"{path}: cannot be read ({' '.join(str(e).split())}); delete it and load "
                f"again, or reinstall its source"
            ) from None
        tmp = raw / f".{name}.partial"
        tmp.write_bytes(data)
        os.replace(tmp, raw / name)


# ---------------------------------------------------------------- CIFAR (python pickles)


def _load_cifar(key: str, root: Path, download: bool):
    folder_name, train_files, test_files, meta_file = CIFAR_LAYOUT[key]
    folder = root / folder_name
    source = str(folder)
    if not all((folder / f).is_file() for f in [*train_files, *test_files, meta_file]):
        _download(key, root, download, [str(folder)])
        source = f"{folder} (downloaded)"
    cls = _CIFAR[key]
    splits = []
    for train, files in ((True, train_files), (False, test_files)):
        ds = _read_or_name(
            lambda: cls(str(root), train=train),
            {folder / f: folder / f for f in [*files, meta_file]},
            _unpickle,
            "cannot be unpickled as a CIFAR batch",
        )
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2), dtype=np.uint8))
        if len(images) != len(ds.targets):
            raise CorruptDataError(f"{folder}: {len(images)} images but {len(ds.targets)} labels")
        splits.append(Split(images, torch.as_tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1], [str(name) for name in ds.classes], source


def _without_md5(base: type) -> type:
    """torchvision's CIFAR class without the md5 of every file: that check accepts the published files
    only, byte for byte, while reading them names a corrupt one, and copies in the same format (a
    re-pickled batch, the tests' small files) load too. Downloads keep the md5 check."""
    return type(
        base.__name__,
        (base,),
        {
            "train_list": [[name, None] for name, _ in base.train_list],
            "test_list": [[name, None] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


_CIFAR = {"cifar10": _without_md5(CIFAR10), "cifar100": _without_md5(CIFAR100)}


def _unpickle(path: Path) -> None:
    """What torchvision does with each file (the check ``_read_or_name`` names a culprit with)."""
    with open(path, "rb") as f:
        if not isinstance(pickle.load(f, encoding="latin1"), dict):
            raise ValueError("not a dict")


# ---------------------------------------------------------------- downloads


def _download(key: str, root: Path, download: bool, searched: list[str]) -> None:
    """torchvision's download into ``root``; any failure becomes one message naming every place."""
    hint = {
        "fashion_mnist": "install Debian's package (apt-get install dataset-fashion-mnist), or "
        "allow the download with internet access",
    }.get(
        key,
        "allow the download with internet access, or copy torchvision's "
        f"{CIFAR_LAYOUT.get(key, ('',))[0]} folder into {root}",
    )
    if not download:
        raise DataNotFoundError(f"{key} not found; searched: {'; '.join(searched)}. Download is disabled: {hint}.")
    cls = {
        "fashion_mnist": torchvision.datasets.FashionMNIST,
        "cifar10": torchvision.datasets.CIFAR10,
        "cifar100": torchvision.datasets.CIFAR100,
    }[key]
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types (URLError, socket, HTTP, md5)
        raise DataNotFoundError(
            f"{key} not found; searched: {'; '.join(searched)}; the download into {root} failed "
            f"({type(e).__name__}: {e}). To get the data: {hint}."
        ) from None


# ---------------------------------------------------------------- image folders


def _load_image_folder(folder: Path, image_size: int, seed: int):
    """``folder/<class>/*.png`` (split into train/test by ``seed``) or ``folder/{train,test}/<class>/``."""
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        classes = _folder_classes(folder / "train")
        test_classes = _folder_classes(folder / "test", at_least=1)
        if test_classes != classes:
            missing, extra = sorted(set(classes) - set(test_classes)), sorted(set(test_classes) - set(classes))
            raise DatasetError(
                f"{folder}: train/ and test/ must hold the same classes; test/ lacks {missing or 'none'}"
                f", has extra {extra or 'none'}"
            )
        train = _read_image_files(folder / "train", classes, image_size)
        test = _read_image_files(folder / "test", classes, image_size)
    else:
        classes = _folder_classes(folder)
        train, test = stratified_split(_read_image_files(folder, classes, image_size), 0.2, seed + 1, classes)
    return train, test, classes, str(folder)


def _folder_classes(folder: Path, at_least: int = 2) -> list[str]:
    classes = sorted(
        d.name for d in folder.iterdir() if d.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir())
    )
    if not classes:
        raise DataNotFoundError(
            f"{folder}: no images found; expected one sub-folder per class "
            f"holding {'/'.join(sorted(IMAGE_SUFFIXES))} files"
        )
    if len(classes) < at_least:
        raise DatasetError(f"{folder}: only one class ({classes[0]!r}) has images; classification needs at least two")
    return classes


def _read_image_files(folder: Path, classes: list[str], image_size: int) -> Split:
    """Every image of ``classes`` under ``folder``, listed as ``ImageFolder`` lists them (sorted, sub-folders
    included), resized as it loads: the images of a folder differ in size."""
    from PIL import Image, UnidentifiedImageError

    samples = ImageFolder.make_dataset(
        str(folder),
        {c: i for i, c in enumerate(classes)},
        is_valid_file=lambda p: Path(p).suffix.lower() in IMAGE_SUFFIXES,
    )
    images, labels = [], []
    for path, label in samples:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                images.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
        except (OSError, UnidentifiedImageError) as e:
            raise CorruptDataError(f"{path}: cannot be read as an image ({e})") from None
        labels.append(label)
    if not images:
        raise DataNotFoundError(f"{folder}: no images found under {', '.join(classes)}")
    return Split(torch.stack(images), torch.tensor(labels, dtype=torch.long))


# ---------------------------------------------------------------- batching on the device


class DeviceLoader:
    """Shuffle and batch tensors that already live on the device: one gather per batch.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same
    batches as an uninterrupted one. With ``world_size > 1`` each rank takes every
    ``world_size``-th sample of the same permutation (what ``DistributedSampler`` does).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.split, self.batch_size = split, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start, self._order = 0, 0, None

    def set_epoch(self, epoch: int, *, order: torch.Tensor | None = None, start: int = 0) -> None:
        """The epoch decides the order. A run resumed inside an epoch passes the order it saved
        (``permutation``) and the batches it had trained on, which are skipped (``start``)."""
        self.epoch, self._order, self.start = epoch, order, start

    def permutation(self) -> torch.Tensor:
        """This epoch's order of the whole split (every rank's share), on the CPU."""
        if self._order is not None:
            return self._order.cpu()
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            return torch.randperm(n, generator=g)
        return torch.arange(n)

    def _indices(self) -> torch.Tensor:
        n = len(self.split)
        idx = self.permutation()
        if self.world_size > 1:
            idx = idx[: n - n % self.world_size][self.rank :: self.world_size]
        return idx.to(self.split.images.device)

    def __len__(self) -> int:
        n = len(self.split) // self.world_size if self.world_size > 1 else len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        idx = self._indices()
        for start in range(self.start * self.batch_size, len(self) * self.batch_size, self.batch_size):
            batch = idx[start : start + self.batch_size]
            yield self.split.images[batch], self.split.labels[batch]
