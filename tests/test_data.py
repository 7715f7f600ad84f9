"""search.train.data: the split, the device loader's augmentation, image folders and archives, the
decoded-image cache, the errors a user can cause, and a few hundred real CIFAR-10 images."""
from __future__ import annotations

import io
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import search.train.data as data
from search.cli import main
from search.train.data import DataError, DeviceLoader, Images, make_dataset
from search.train.errors import Stopped
from spaces import Config

PIXELS = 3 * 32 * 32


def image_keys(images: Images) -> list[bytes]:
    """One key per image: its raw bytes, so identity survives any reordering."""
    return [bytes(row) for row in images.x.reshape(len(images), -1).numpy()]


# ---------------------------------------------------------------- the split

def test_split_is_disjoint_and_covers_the_training_images():
    all_train, test, _ = data.synthetic()
    originals = image_keys(all_train)
    assert len(set(originals)) == len(originals)  # identity by bytes is meaningful here

    ds = make_dataset("synthetic", seed=0, val_size=5000)
    train, val = image_keys(ds.train), image_keys(ds.val)
    assert len(val) == len(originals) // 10       # capped at a tenth of the training images
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(originals)
    # The test set is untouched: same images in the same order.
    assert torch.equal(ds.test.x, test.x) and torch.equal(ds.test.y, test.y)


def test_validation_set_is_class_balanced():
    ds = make_dataset("synthetic", seed=3, val_size=150)
    assert torch.bincount(ds.val.y, minlength=10).tolist() == [15] * 10


def test_split_is_reproducible_for_a_seed_and_changes_with_it():
    first, again = make_dataset("synthetic", seed=7), make_dataset("synthetic", seed=7)
    other = make_dataset("synthetic", seed=8)
    assert torch.equal(first.val.x, again.val.x) and torch.equal(first.train.x, again.train.x)
    assert set(image_keys(first.val)) != set(image_keys(other.val))


@pytest.mark.parametrize("subset", [50, 57])
def test_train_subset_is_class_balanced_and_outside_validation(subset):
    ds = make_dataset("synthetic", seed=0, train_subset=subset)
    counts = torch.bincount(ds.train.y, minlength=10)
    assert len(ds.train) == subset
    assert counts.max() - counts.min() <= 1
    assert not set(image_keys(ds.train)) & set(image_keys(ds.val))


def test_train_subset_smaller_than_the_classes_is_refused():
    with pytest.raises(DataError, match="smaller than the 10 classes"):
        make_dataset("synthetic", train_subset=5)


# ---------------------------------------------------------------- the device loader

def numbered_images(n: int) -> Images:
    """Images whose label is their index, so a batch says which images it holds."""
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(1),
                      dtype=torch.uint8)
    return Images(x, torch.arange(n))


def epoch(loader: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_evaluation_batches_are_identical_every_epoch_and_only_normalised():
    images = numbered_images(50)
    mean, std = data.channel_stats(images)
    loader = DeviceLoader(images, mean, std, batch_size=16, train=False)
    x1, y1 = epoch(loader)
    x2, y2 = epoch(loader)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert y1.tolist() == list(range(50))          # every image once, in order, last batch kept
    expected = (images.x.float() - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(x1, expected)


def test_training_batches_reshuffle_and_augment_each_epoch():
    images = numbered_images(50)
    mean, std = data.channel_stats(images)
    loader = DeviceLoader(images, mean, std, batch_size=16, train=True,
                          generator=torch.Generator().manual_seed(0))
    assert len(loader) == 3                        # the last partial batch is dropped
    x1, y1 = epoch(loader)
    x2, y2 = epoch(loader)
    assert len(set(y1.tolist())) == 48 and len(set(y2.tolist())) == 48  # no repeats
    assert not torch.equal(y1, y2)                 # a new order each epoch
    # The same image comes out differently in two epochs (crop/flip), and differs from
    # its plain normalised self in at least one of them.
    plain = (images.x.float() - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    by_image_1 = dict(zip(y1.tolist(), x1))
    by_image_2 = dict(zip(y2.tolist(), x2))
    both = sorted(set(by_image_1) & set(by_image_2))
    first = torch.stack([by_image_1[i] for i in both])
    second = torch.stack([by_image_2[i] for i in both])
    assert not torch.equal(first, second)
    assert not torch.equal(first, plain[both])


def test_an_epoch_resumed_at_a_batch_continues_the_same_batches():
    images = numbered_images(50)
    mean, std = data.channel_stats(images)

    def loader():
        return DeviceLoader(images, mean, std, batch_size=16, train=True,
                            generator=torch.Generator().manual_seed(0))
    whole = loader()
    full = list(whole)
    resumed = loader()
    order = resumed.shuffle()
    head = [next(resumed.batches(order, start=0))]             # one batch, then "killed"
    state = resumed.generator.get_state()
    again = loader()
    again.generator.set_state(state)
    tail = list(again.batches(order, start=1))
    assert len(full) == 3 and len(head + tail) == 3
    for (x1, y1), (x2, y2) in zip(full, head + tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("a, b, same", [
    ("cpu", "cpu", True), ("cpu", torch.device("cpu"), True), ("cuda", "cuda:0", True),
    ("cuda:0", torch.device("cuda"), True), ("cuda:1", "cuda", False),
    ("cuda:1", "cuda:1", True), ("cpu", "cuda", False), ("cuda:0", "cpu", False),
])
def test_devices_compare_by_type_and_index(a, b, same):
    if not torch.cuda.is_available() or torch.cuda.current_device() == 0:
        assert data.same_device(a, b) is same


def test_cuda_without_an_index_is_the_current_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert data.same_device("cuda", "cuda:1") and not data.same_device("cuda", "cuda:0")


def test_moving_the_data_computes_its_statistics_once_where_it_is(monkeypatch):
    calls = []
    real = data.channel_stats
    monkeypatch.setattr(data, "channel_stats", lambda images: calls.append(1) or real(images))
    ds = make_dataset("synthetic", seed=0)
    assert ds.to("cpu") is ds and ds.to(torch.device("cpu")) is ds
    moved = ds.to("meta")                      # another device: a new Dataset, stats carried
    assert moved is not ds and moved.train.x.device.type == "meta"
    assert moved.normalisation()[0].device.type == "meta"
    ds.normalisation()
    assert calls == [1]


def which_shift(out: torch.Tensor, image: torch.Tensor) -> tuple[int, int, bool] | None:
    """The (dy, dx, flipped) such that out is that crop of the 4-px zero-padded image."""
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + 32, dx:dx + 32]
            for flipped in (False, True):
                if torch.equal(out, crop.flip(2) if flipped else crop):
                    return dy, dx, flipped
    return None


def augmented_copies(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image with distinct pixel values (so every shift and mirror is recognisable),
    and `count` training augmentations of it."""
    image = torch.arange(1, PIXELS + 1, dtype=torch.float32).view(3, 32, 32)
    batch = image.expand(count, 3, 32, 32).clone()
    loader = DeviceLoader(Images(batch.to(torch.uint8), torch.zeros(count, dtype=torch.int64)),
                          torch.zeros(3), torch.ones(3), batch_size=count, train=True,
                          generator=torch.Generator().manual_seed(seed))
    return image, loader.augment(batch)


def test_augment_crops_32x32_shifts_of_the_padded_image_and_mirrors_half():
    image, out = augmented_copies(200, seed=0)
    assert out.shape == (200, 3, 32, 32)
    shifts = [which_shift(o, image) for o in out]
    assert None not in shifts                      # every output is a crop (maybe mirrored)
    flips = sum(flipped for _, _, flipped in shifts)
    assert 60 < flips < 140                        # about half mirrored
    offsets = {(dy, dx) for dy, dx, _ in shifts}
    assert len(offsets) > 40                       # crops at many of the 81 offsets
    assert any(dy != 4 or dx != 4 for dy, dx in offsets)   # content really moves
    # A crop from the top of the padded image starts with the 4 rows of zero padding.
    index = next(i for i, (dy, _, _) in enumerate(shifts) if dy == 0)
    assert (out[index, :, :4] == 0).all() and (out[index, :, 4] != 0).any()


def test_flip_mirrors_left_and_right():
    # Among 2,000 draws about 25 are the centred crop (1 in 81): half mirrored, half not.
    image, out = augmented_copies(2000, seed=1)
    as_is = (out == image).flatten(1).all(1)
    mirrored = (out == image.flip(2)).flatten(1).all(1)
    assert as_is.sum() >= 3 and mirrored.sum() >= 3
    first = out[mirrored.nonzero()[0, 0]]
    assert torch.equal(first[:, :, 0], image[:, :, 31])    # left column = right column
    assert torch.equal(first[:, 5, :], image[:, 5, :].flip(1))
    assert torch.equal(first[:, :, 10], image[:, :, 21])


# ---------------------------------------------------------------- image folders and archives

CLASSES = ("cat", "dog", "frog")


def write_image_folder(root: Path, per_class: dict[str, int]) -> dict[str, list[np.ndarray]]:
    """train/<class>/*.png and test/<class>/*.png with random pixels; returns them by split."""
    rng = np.random.default_rng(0)
    written: dict[str, list[np.ndarray]] = {}
    for split, n in per_class.items():
        written[split] = []
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")
                written[split].append(pixels)
    return written


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("OPTUNA_SEARCH_CACHE", str(folder))
    return folder


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "tiny"
    return root, write_image_folder(root, {"train": 4, "test": 2})


def test_image_folder_loads_every_image_with_its_class(image_folder, cache):
    root, written = image_folder
    train, test, classes = data.load_source(str(root))
    assert classes == list(CLASSES)
    assert train.x.shape == (12, 3, 32, 32) and train.x.dtype == torch.uint8
    assert train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert test.y.tolist() == [0, 0, 1, 1, 2, 2]
    # PNG is lossless: the pixels come back exactly, channels first.
    assert torch.equal(train.x.permute(0, 2, 3, 1), torch.from_numpy(np.stack(written["train"])))
    assert torch.equal(test.x.permute(0, 2, 3, 1), torch.from_numpy(np.stack(written["test"])))


def test_a_stop_check_ends_the_decoding_before_the_next_image(image_folder, cache, tmp_path):
    """A stop noted while the data loads (its KeyboardInterrupt possibly lost) ends the load
    within an image, read from a folder or an archive; nothing is cached."""
    root, _ = image_folder
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="tiny")
    for source in (root, archive):
        checks = []
        with pytest.raises(Stopped):
            data.make_dataset(str(source), should_stop=lambda: checks.append(1) or len(checks) > 20)
        assert len(checks) == 21   # the 21st check said stop: nothing after it
        assert not list(cache.glob("*.pt"))


def test_targz_of_the_folder_loads_the_same(image_folder, cache, tmp_path):
    root, _ = image_folder
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="tiny")               # a leading folder, as archives often have
    from_folder = data.load_source(str(root))
    from_archive = data.load_source(str(archive))
    assert from_archive[2] == from_folder[2]
    for a, b in zip(from_archive[:2], from_folder[:2]):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_decoded_images_are_cached_and_the_second_load_skips_decoding(
        image_folder, cache, monkeypatch):
    root, _ = image_folder
    first = data.load_source(str(root))
    cached = list(cache.glob("*.pt"))
    assert len(cached) == 1 and not list(root.rglob("*.pt"))   # never beside the source

    def no_decoding(path):
        raise AssertionError("decoded again although a cache exists")
    monkeypatch.setattr(data, "_decode_image_folder", no_decoding)
    started = time.perf_counter()
    second = data.load_source(str(root))
    assert time.perf_counter() - started < 2.0   # a cache read: no decoding
    assert second[2] == first[2]
    for a, b in zip(second[:2], first[:2]):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_images_of_another_size_are_resized_to_32(tmp_path, cache):
    for split in ("train", "test"):
        (tmp_path / "big" / split / "a").mkdir(parents=True)
        Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "big" / split / "a" / "x.jpg")
    train, _, _ = data.load_source(str(tmp_path / "big"))
    assert train.x.shape == (1, 3, 32, 32)
    assert abs(int(train.x[0, 1].float().mean()) - 200) < 5


def test_missing_path_is_a_clear_error(tmp_path, cache):
    with pytest.raises(DataError, match="does not exist.*cifar10, synthetic"):
        make_dataset(str(tmp_path / "nowhere"))
    assert not cache.exists()


def test_folder_without_images_is_a_clear_error(tmp_path, cache):
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "cat" / "notes.txt").write_text("no pictures here")
    with pytest.raises(DataError, match=r"holds no images in train/<class>/ and test/<class>/"):
        make_dataset(str(tmp_path / "empty"))
    assert not cache.exists() or not any(cache.iterdir())


def test_a_file_that_is_not_an_archive_is_a_clear_error(tmp_path, cache):
    fake = tmp_path / "cifar.tar.gz"
    fake.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError, match="is not a readable .tar.gz archive"):
        make_dataset(str(fake))


def test_a_truncated_archive_is_one_line_naming_it_and_exit_2(cifar_tarball, tmp_path, cache,
                                                             capsys):
    """A download cut short: the first 30,000 bytes of the real CIFAR-10 tarball."""
    truncated = tmp_path / "cifar10-jpeg.tar.gz"
    with open(cifar_tarball, "rb") as whole:
        truncated.write_bytes(whole.read(30_000))
    with pytest.raises(DataError, match="is truncated or damaged"):
        make_dataset(str(truncated))
    db = tmp_path / "s.db"
    assert main(["mlp", "--trials", "1", "--epochs", "1", "--data", str(truncated),
                 "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{truncated} is truncated or damaged" in err


def test_test_classes_without_training_images_are_refused(tmp_path, cache):
    for split, name in (("train", "cat"), ("test", "dog")):
        (tmp_path / "odd" / split / name).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "odd" / split / name / "0.png")
    with pytest.raises(DataError, match=r"test classes \['dog'\] have no training images"):
        data.load_source(str(tmp_path / "odd"))


def test_cifar10_without_network_names_the_archive_to_fetch(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as caught:
        make_dataset("cifar10", data_dir=tmp_path / "data")
    message = str(caught.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path / "data") in message
    assert "\n" not in message
    assert not (tmp_path / "data").exists()  # the failed download leaves no empty folder


# ---------------------------------------------------------------- real CIFAR-10, a few hundred

def small_cifar_archive(source: Path, target: Path, train_per_class: int = 24,
                        test_per_class: int = 8) -> None:
    """Copy the first images of each class (train and test) into a small .tar.gz."""
    quota = {"train": train_per_class, "test": test_per_class}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(source) as big, tarfile.open(target, "w:gz") as small:
        for member in big:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3:
                continue
            key = parts[-3], parts[-2]
            if taken.get(key, 0) < quota.get(key[0], 0):
                taken[key] = taken.get(key, 0) + 1
                small.addfile(member, io.BytesIO(big.extractfile(member).read()))


def test_one_epoch_on_a_few_hundred_real_images(cifar_tarball, tmp_path, cache):
    from search.train.models import build
    from search.train.trainer import train

    archive = tmp_path / "cifar-small.tar.gz"
    small_cifar_archive(cifar_tarball, archive)
    ds = make_dataset(str(archive), seed=0, val_size=5000)
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                          "horse", "ship", "truck"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (216, 24, 80)
    assert 60 < ds.train.x.float().mean() < 200     # real pictures, not blank decodes
    result = train(build("mlp", Config(hidden_sizes=(64,))), Config(epochs=1, batch_size=32),
                   ds, device="cpu", seed=0)
    assert len(result.epochs) == 1 and result.best_epoch == 1
    assert np.isfinite(result.epochs[0].train_loss) and result.test_acc is not None
    assert 0.0 <= result.test_acc <= 1.0 and result.test_seconds > 0


def test_cache_notices_an_image_added_inside_a_class_folder(tmp_path, monkeypatch):
    """The folder's own mtime does not change when train/<class>/ gains a file."""
    from PIL import Image
    from search.train.data import load_source
    monkeypatch.setenv("OPTUNA_SEARCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "images"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(root / split / "a" / "0.png")
    assert len(load_source(str(root))[0]) == 1
    Image.new("RGB", (32, 32), (40, 50, 60)).save(root / "train" / "a" / "1.png")
    assert len(load_source(str(root))[0]) == 2


# ---------------------------------------------------------------- an image that cannot be decoded

@pytest.mark.parametrize("inside", ["folder", "archive"])
@pytest.mark.parametrize("fault", ["cut short", "not an image"])
def test_an_image_that_cannot_be_decoded_is_one_line_naming_it_and_exit_2(inside, fault,
                                                                         tmp_path, cache):
    from helpers import run_cli
    root = tmp_path / "images"
    for split in ("train", "test"):
        for name in [f"c{i}" for i in range(10)]:   # ten classes: what the models classify
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32), (9, 99, 199)).save(root / split / name / "0.jpg")
    broken = root / "test" / "c3" / "1.jpg"
    if fault == "cut short":   # a JPEG whose download stopped half-way
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
                        ).save(broken)
        broken.write_bytes(broken.read_bytes()[:400])
    else:
        broken.write_text("<html>404 Not Found</html>")
    source, named = root, str(broken)
    if inside == "archive":
        source = tmp_path / "images.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(root, arcname="images")
        named = f"{source}: images/test/c3/1.jpg"
    with pytest.raises(DataError, match="cannot be decoded as an image") as caught:
        data.load_source(str(source))
    assert str(caught.value).startswith(named)
    process = run_cli(["mlp", "--data", str(source), "--epochs", "1", "--storage",
                       f"sqlite:///{tmp_path}/s.db"])
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err
    assert err == f"optuna-search: error: {caught.value}\n"
    assert not (tmp_path / "s.db").exists()
