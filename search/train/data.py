"""Image data as uint8 tensors, a disjoint train/validation split, and a loader that lives on
the training device (GPU when present) and does crop and flip there.

Sources (`--data`): "cifar10" (torchvision's CIFAR10 under a data dir), a folder or .tar.gz in
image-folder layout (train/<class>/*, test/<class>/*), or "synthetic" (generated, learnable).
Decoded image folders are cached in ~/.cache/optuna-search (never beside the source). A path
is checked first (search/train/sources.py, also run by the command line before torch loads);
an image that cannot be decoded is named in one line (DataError), found while decoding.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from search.train.errors import DataError, check, first_line
from search.train.sources import (IMAGE_SUFFIXES, cache_dir, cached_images, check_class_count,
                                  check_source, split_and_class)


@dataclass
class Images:
    """One set of images: x uint8 (N, 3, 32, 32), y int64 (N,)."""
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: torch.Tensor) -> "Images":
        return Images(self.x[index], self.y[index])

    def to(self, device) -> "Images":
        return Images(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    train: Images
    val: Images
    test: Images
    classes: list[str]
    source: str
    _stats: tuple | None = None   # per-channel (mean, std) of train, computed once
    fingerprint: str = ""         # of the source's content (content_fingerprint), for studies

    def to(self, device) -> "Dataset":
        """The data on `device`: itself when it is there already (a study moves it once per
        process, and every trial's train() then finds it in place)."""
        if same_device(self.train.x.device, device):
            return self
        mean, std = self.normalisation()   # where the data is now: no float copy on a GPU
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device),
                                   test=self.test.to(device),
                                   _stats=(mean.to(device), std.to(device)))

    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the training images (0..255), computed once."""
        if self._stats is None:
            self._stats = channel_stats(self.train)
        return self._stats

    def describe(self) -> str:
        """'cifar10-jpeg.tar.gz: 5,000 train / 1,000 val / 1,000 test' (images): short, so
        that 'data ../shared/data/cifar10-jpeg.tar.gz: ' and the whole split fit 80 columns."""
        return (f"{self.source}: {len(self.train):,} train / {len(self.val):,} val / "
                f"{len(self.test):,} test")


def same_device(a, b) -> bool:
    """True when two devices are the same one: "cuda", "cuda:0" and a tensor's cuda:0 are
    one device while the current CUDA device is 0 (torch.device("cuda") != "cuda:0")."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    return a.type == "cpu" or _index(a) == _index(b)


def _index(device: torch.device) -> int:
    if device.index is not None:
        return device.index
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.current_device()
    return 0


# ---------------------------------------------------------------- sources -> (train, test, classes)

def load_source(source: str, data_dir: str | Path = "data",
                say: Callable[[str], None] | None = None,
                should_stop: Callable[[], bool] | None = None
                ) -> tuple[Images, Images, list[str]]:
    if source == "synthetic":
        return synthetic()
    if source == "cifar10":
        if say is not None:
            say(f"reading CIFAR-10 with torchvision (downloaded into {data_dir}/ the first "
                "time)...")
        return _torchvision_cifar10(Path(data_dir))
    check_source(source, classes=None)   # at once, in one line: missing, no layout, truncated
    return _cached_image_folder(Path(source).expanduser(), say, should_stop)


def synthetic(n_train: int = 2000, n_test: int = 500, seed: int = 0
              ) -> tuple[Images, Images, list[str]]:
    """Deterministic, learnable images: each class has its own colour template, plus noise.

    A linear model beats chance on it after one epoch, yet it is not trivial: the noise
    (std 50 of 255) is larger than the gap between templates in most pixels.
    """
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 3, 32, 32, generator=gen) * 160 + 48  # 48..208, per class

    def make(n: int) -> Images:
        y = torch.arange(n) % 10
        noise = torch.randn(n, 3, 32, 32, generator=gen) * 50
        x = (templates[y] + noise).clamp(0, 255).to(torch.uint8)
        return Images(x, y)

    return make(n_train), make(n_test), [f"class{i}" for i in range(10)]


def _torchvision_cifar10(root: Path) -> tuple[Images, Images, list[str]]:
    from torchvision.datasets import CIFAR10
    created = not root.exists()
    try:
        train = CIFAR10(str(root), train=True, download=True)
        test = CIFAR10(str(root), train=False, download=True)
    except Exception as error:  # no network, a broken archive, a read-only folder
        if created:  # leave no empty ./data behind a failed download
            shutil.rmtree(root, ignore_errors=True)
        raise DataError(
            f"could not load or download CIFAR-10 into {root}/ ({type(error).__name__}: "
            f"{str(error)[:80]}); put cifar-10-python.tar.gz in {root}/ (or use --data-dir), "
            "or pass an image folder / .tar.gz with --data") from None

    def convert(ds) -> Images:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return Images(x, torch.tensor(ds.targets, dtype=torch.int64))

    return convert(train), convert(test), list(train.classes)


def _cached_image_folder(path: Path, say: Callable[[str], None] | None = None,
                         should_stop: Callable[[], bool] | None = None
                         ) -> tuple[Images, Images, list[str]]:
    cached = cached_images(path)
    if say is not None and not cached.exists():
        say("decoding the images once (15-60 s for CIFAR-10; cached for the next runs)...")
    if cached.exists():
        try:
            blob = torch.load(cached, weights_only=True)
            return (Images(blob["train_x"], blob["train_y"]),
                    Images(blob["test_x"], blob["test_y"]), list(blob["classes"]))
        except Exception:
            cached.unlink(missing_ok=True)  # a torn write: decode again
    train, test, classes = _decode_image_folder(path, should_stop)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".tmp")
    torch.save(dict(train_x=train.x, train_y=train.y, test_x=test.x, test_y=test.y,
                    classes=classes), partial)
    partial.replace(cached)  # atomic: a killed process never leaves half a cache
    return train, test, classes


def _decode_image_folder(path: Path, should_stop: Callable[[], bool] | None = None
                         ) -> tuple[Images, Images, list[str]]:
    """Read train/<class>/* and test/<class>/* from a folder or a .tar(.gz) archive;
    `should_stop()` is read before each file (True raises Stopped)."""
    files: dict[str, dict[str, list[tuple[str, bytes]]]] = {"train": {}, "test": {}}
    if path.is_dir():
        for split in files:
            for image in sorted((path / split).glob("*/*")):
                check(should_stop)
                if image.suffix.lower() in IMAGE_SUFFIXES:
                    try:
                        blob = image.read_bytes()
                    except OSError as error:
                        raise DataError(f"{image} cannot be read ({error.strerror})") from None
                    files[split].setdefault(image.parent.name, []).append((str(image), blob))
    else:
        try:
            with tarfile.open(path) as archive:
                for member in archive:
                    check(should_stop)
                    where = split_and_class(member.name) if member.isfile() else None
                    if where:
                        data = archive.extractfile(member).read()
                        files[where[0]].setdefault(where[1], []).append(
                            (f"{path}: {member.name}", data))
        except tarfile.TarError as error:
            raise DataError(f"{path} is not a readable .tar.gz archive ({error})") from None
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as error:
            # A download cut short ends mid-stream (EOFError); flipped bytes fail a check
            # (zlib.error, BadGzipFile, or bz2/lzma's OSError without an errno).
            if isinstance(error, OSError) and error.errno is not None \
                    and not isinstance(error, gzip.BadGzipFile):
                raise DataError(f"{path} cannot be read ({error.strerror})") from None
            raise DataError(f"{path} is truncated or damaged ({first_line(error)}); "
                            "download or copy it again") from None
    classes = sorted(files["train"])
    if not classes or not files["test"]:
        raise DataError(f"{path} holds no images in train/<class>/ and test/<class>/ folders")
    unknown = set(files["test"]) - set(classes)
    if unknown:
        raise DataError(f"{path}: test classes {sorted(unknown)} have no training images")
    return (_decode(files["train"], classes, should_stop),
            _decode(files["test"], classes, should_stop), classes)


def _decode(by_class: dict[str, list[tuple[str, bytes]]], classes: list[str],
            should_stop: Callable[[], bool] | None = None) -> Images:
    from PIL import Image, UnidentifiedImageError
    xs, ys = [], []
    for label, name in enumerate(classes):
        for where, blob in by_class.get(name, []):
            check(should_stop)
            try:
                image = Image.open(io.BytesIO(blob)).convert("RGB")
            except Exception as error:  # PIL's formats raise many types for a broken file
                # (UnidentifiedImageError, OSError "truncated", SyntaxError, ValueError...)
                why = ("no image format PIL knows" if isinstance(error, UnidentifiedImageError)
                       else first_line(error))
                raise DataError(f"{where} cannot be decoded as an image ({why}); remove or "
                                "replace it") from None
            if image.size != (32, 32):
                image = image.resize((32, 32))
            xs.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
                      .view(32, 32, 3))
            ys.append(label)
    return Images(torch.stack(xs).permute(0, 3, 1, 2).contiguous(),
                  torch.tensor(ys, dtype=torch.int64))


# ---------------------------------------------------------------- split

def balanced_subset(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of n items, as equal a share per class as the classes allow, in shuffled order."""
    classes = labels.unique()
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=generator)] for idx in per_class]
    chosen, quota = [], n // len(classes)
    extra = n - quota * len(classes)
    for i, idx in enumerate(per_class):
        chosen.append(idx[: quota + (1 if i < extra else 0)])
    index = torch.cat(chosen)
    return index[torch.randperm(len(index), generator=generator)]


def make_dataset(source: str = "synthetic", data_dir: str | Path = "data", seed: int = 0,
                 val_size: int = 5000, train_subset: int | None = None,
                 test_subset: int | None = None,
                 say: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Dataset:
    """Load a source and hold out a seeded, class-balanced validation set disjoint from train.

    val_size is capped at a tenth of the training images (45,000 / 5,000 on CIFAR-10).
    train_subset keeps a class-balanced part of the remaining training images.
    `say` gets a line before a long load (a first decode, a download); the caller names the
    data once it is loaded (Dataset.describe). `should_stop()` is read before each image
    read and decoded: True raises Stopped.
    """
    train, test, classes = load_source(source, data_dir, say, should_stop)
    check_class_count(source, classes)
    fingerprint = content_fingerprint(train, test, classes)
    generator = torch.Generator().manual_seed(seed)
    n_val = min(val_size, len(train) // 10)
    val_index = balanced_subset(train.y, n_val, generator)
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[val_index] = False
    train_index = torch.nonzero(rest).flatten()
    if train_subset is not None:
        if train_subset < len(classes):
            raise DataError(f"--train-subset {train_subset} is smaller than the "
                            f"{len(classes)} classes")
        pick = balanced_subset(train.y[train_index], min(train_subset, len(train_index)),
                               generator)
        train_index = train_index[pick]
    if test_subset is not None:
        test = test.take(balanced_subset(test.y, min(test_subset, len(test)), generator))
    return Dataset(train.take(train_index), train.take(val_index), test, classes, source,
                   fingerprint=fingerprint)


def content_fingerprint(train: Images, test: Images, classes: list[str]) -> str:
    """A short hash of every image, label and class name (about 0.1 s for CIFAR-10): a study
    records it, so a run on other data is refused, wherever the data lies on a machine."""
    digest = hashlib.blake2b(digest_size=8)
    for tensor in (train.x, train.y, test.x, test.y):
        digest.update(memoryview(tensor.contiguous().numpy()).cast("B"))
    digest.update("\0".join(classes).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- the device-resident loader

class DeviceLoader:
    """Batches of normalised float images from uint8 tensors on one device.

    Training batches are reshuffled each epoch and get a random crop (zero padding 4 px) and a
    horizontal flip, done on the device for the whole batch at once; evaluation batches are
    only normalised. Mean and std per channel come from the training images.
    """

    def __init__(self, images: Images, mean: torch.Tensor, std: torch.Tensor,
                 batch_size: int, train: bool, generator: torch.Generator | None = None,
                 channels_last: bool = False):
        self.images, self.batch_size, self.train = images, batch_size, train
        device = images.x.device
        self.mean = mean.to(device).view(1, 3, 1, 1)
        self.std = std.to(device).view(1, 3, 1, 1)
        self.generator = generator
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Training drops the last partial batch, so every step has one shape (CUDA graphs,
        # cudnn autotuning); reshuffling each epoch still shows every image over time.
        n = len(images)
        self.drop_last = train and n > batch_size

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return self.batches(self.shuffle())

    def shuffle(self) -> torch.Tensor | None:
        """A new epoch's order of the images (training only; None: in order)."""
        if not self.train:
            return None
        return torch.randperm(len(self.images), device=self.images.x.device,
                              generator=self.generator)

    def batches(self, order: torch.Tensor | None, start: int = 0):
        """The epoch's batches in `order`, from batch number `start` (0-based) on: a run
        resumed in the middle of an epoch continues it with the saved order."""
        x, y = self.images.x, self.images.y
        for step in range(start, len(self)):
            sl = slice(step * self.batch_size, (step + 1) * self.batch_size)
            index = order[sl] if order is not None else sl
            batch = x[index].float()
            if self.train:
                batch = self.augment(batch)
            batch = ((batch - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            yield batch, y[index]

    def augment(self, batch: torch.Tensor) -> torch.Tensor:
        """Random 32x32 crop of the 4-px zero-padded image and a random horizontal flip."""
        b, _, h, w = batch.shape
        padded = F.pad(batch, (4, 4, 4, 4))
        dy = torch.randint(0, 9, (b,), device=batch.device, generator=self.generator)
        dx = torch.randint(0, 9, (b,), device=batch.device, generator=self.generator)
        rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]
        channels = torch.arange(3, device=batch.device)[None, :, None, None]
        cropped = padded[torch.arange(b, device=batch.device)[:, None, None, None],
                         channels, rows, cols]
        flip = torch.rand(b, device=batch.device, generator=self.generator) < 0.5
        return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def channel_stats(images: Images) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, in 0..255 units."""
    x = images.x.float()
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-3)
