"""search/train/sources.py: a --data path checked before the heavy imports. Every bad input is
made for real (a missing path, an empty file, random bytes, text, gzip of no tar, a truncated
.tar.gz and .tar, a folder without train/ or test/) and given to the command in a subprocess:
one line naming the path and the fault, exit 2, neither torch nor Optuna imported, within
seconds. Valid sources (folder, .tar, .tar.gz/.bz2/.xz, long names, the real CIFAR-10
archive) pass, and the tar walk finds the classes tarfile finds."""
from __future__ import annotations

import gzip
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.cli.early import data_option
from search.train import sources
from search.train.errors import DataError
from search.train.sources import Layout, archive_layout, check_source, split_and_class

from helpers import run_cli

CLASS_NAMES = [f"c{i}" for i in range(10)]
# Start to exit of a refused command, seconds: measured 0.07-0.31 s at load 3-6 and 0.2-0.3 s
# at load 12 on this 2-core machine (main's code: 6-13 s, after torch and Optuna load); the
# walk of the real 20 MB archive, 0.5 s at load 6, 0.9-1.1 s at load 11. Room for a loaded CI.
CHEAP_SECONDS = 3.0
# What the command had imported when it exited (printed at exit by the subprocess).
REPORT_IMPORTS = ("import atexit\natexit.register(lambda: print('heavy:', *sorted("
                  "{'torch', 'optuna', 'PIL'} & set(sys.modules))))")


def write_images(root: Path, train: int = 2, test: int = 1, classes=CLASS_NAMES) -> Path:
    """train/<class>/*.jpg and test/<class>/*.jpg of random pixels (JPEG: hardly compressible,
    so a cut .tar.gz ends inside its gzip stream)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:04d}.jpg", quality=95)
    return root


def archive(folder: Path, target: Path, mode: str = "w:gz", arcname: str = "tiny") -> Path:
    with tarfile.open(target, mode) as tar:
        tar.add(folder, arcname=arcname)
    return target


def truncated_copy(source: Path, target: Path) -> Path:
    whole = source.read_bytes()
    target.write_bytes(whole[: len(whole) // 2])
    return target


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("OPTUNA_SEARCH_CACHE", str(folder))
    return folder


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_images(tmp_path / "tiny")


# ---------------------------------------------------------------- bad inputs, on the command line

def make_bad(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A bad --data source made for real, and what its error must say."""
    path = tmp_path / "data.tar.gz"
    if kind == "missing":
        return tmp_path / "nowhere", "does not exist"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "is an empty file"
    if kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(65536))
        return path, "is not a readable .tar.gz archive (neither gzip"
    if kind == "text":
        path.write_text("train/cat/0001.jpg\n" * 100)
        return path, "is not a readable .tar.gz archive (neither gzip"
    if kind == "gzip of text":
        path.write_bytes(gzip.compress(b"not a tar file\n" * 100))
        return path, "gzip data that holds no tar archive"
    folder = write_images(tmp_path / "images")
    if kind == "truncated .tar.gz":
        return truncated_copy(archive(folder, tmp_path / "whole.tar.gz"), path), \
            "is truncated or damaged (its gzip stream ends early, after "
    if kind == "truncated .tar":
        return truncated_copy(archive(folder, tmp_path / "whole.tar", "w"),
                              tmp_path / "data.tar"), "is truncated or damaged (the tar data ends"
    if kind == "no train/ or test/":   # the folder one level above the data
        (tmp_path / "above").mkdir()
        folder.rename(tmp_path / "above" / "cifar")
        return tmp_path / "above", "holds no images in train/<class>/ and test/<class>/ " \
                                   "folders (it has no train/ folder; it has cifar/)"
    raise ValueError(kind)


BAD = ["missing", "empty", "random", "text", "gzip of text", "truncated .tar.gz",
       "truncated .tar", "no train/ or test/"]
# Every command that takes --data shares the check: two kinds are enough for the others.
CASES = [(kind, "mlp") for kind in BAD] + [
    (kind, command) for command in ("mlp --workers 2", "worker mlp", "reproduce", "audit mlp")
    for kind in ("missing", "truncated .tar.gz")]


@pytest.mark.parametrize("kind, command", CASES)
def test_a_bad_data_path_is_one_line_exit_2_before_the_heavy_imports(kind, command, tmp_path,
                                                                     cache):
    path, fault = make_bad(kind, tmp_path)
    (tmp_path / "run").mkdir()
    started = time.monotonic()
    process = run_cli([*command.split(), "--data", str(path), "--storage",
                       f"sqlite:///{tmp_path}/run/s.db"], code=REPORT_IMPORTS, cwd=tmp_path / "run")
    out, err = process.communicate(timeout=120)
    seconds = time.monotonic() - started
    assert process.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("optuna-search: error: "), err
    assert str(path) in err and fault in err, err
    assert out == "heavy:\n", out        # neither torch nor Optuna (nor PIL) was loaded
    assert seconds < CHEAP_SECONDS, f"refused after {seconds:.2f} s"
    assert os.listdir(tmp_path / "run") == []   # nothing written


def test_data_option_reads_argv_as_argparse_will():
    assert data_option(["mlp", "--data", "a", "--data=b"]) == "b"     # the last one counts
    assert data_option(["resnet18", "--epochs", "1", "--data=x.tar.gz"]) == "x.tar.gz"
    assert data_option(["worker", "mlp", "--data", "f"]) == "f"
    assert data_option(["reproduce", "--data", "f"]) == "f"
    assert data_option(["audit", "mlp", "--data", "f"]) == "f"
    assert data_option(["mlp", "--data", "f", "--help"]) is None       # help still answers
    assert data_option(["report", "--data", "f"]) is None              # takes no --data
    assert data_option(["mlp", "--data", "--epochs", "1"]) is None     # argparse says what
    assert data_option(["mlp"]) is None and data_option([]) is None


# ---------------------------------------------------------------- valid sources pass

def tarfile_layout(path: Path) -> Layout:
    """The layout as Python's tarfile (what the decoder reads with) sees it."""
    layout = Layout(set(), set())
    with tarfile.open(path) as tar:
        for member in tar:
            where = member.isfile() and split_and_class(member.name)
            if where:
                getattr(layout, where[0]).add(where[1])
    return layout


@pytest.mark.parametrize("mode, suffix", [("w:gz", ".tar.gz"), ("w", ".tar"),
                                          ("w:bz2", ".tar.bz2"), ("w:xz", ".tar.xz")])
@pytest.mark.parametrize("arcname", ["tiny", ".", "a/leading/folder",
                                     "a-folder-name-long-enough-" + "x" * 120])
def test_every_archive_tarfile_reads_passes_with_the_same_classes(tiny, tmp_path, cache, mode,
                                                                  suffix, arcname):
    # "." gives ./train/...; the long name needs a pax (or GNU) header, or a ustar prefix
    path = archive(tiny, tmp_path / f"tiny{suffix}", mode, arcname)
    for tar_format in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        if tar_format != tarfile.PAX_FORMAT:
            if len(arcname) > 100 and tar_format == tarfile.USTAR_FORMAT:
                continue   # ustar cannot hold it
            with tarfile.open(path, mode, format=tar_format) as tar:
                tar.add(tiny, arcname=arcname)
        sources._verified.clear()
        found = archive_layout(path)
        assert found == tarfile_layout(path) == Layout(set(CLASS_NAMES), set(CLASS_NAMES))
        check_source(str(path))


def test_folders_pass_and_named_sources_are_not_paths(tiny, tmp_path, cache, monkeypatch):
    check_source(str(tiny))
    other = write_images(tmp_path / "other", classes=list("abcdefghij"))   # another image set
    check_source(str(other))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10").mkdir()   # a folder of that name does not change what it means
    check_source("cifar10")
    check_source("synthetic")


def test_layout_faults_name_what_is_wrong(tmp_path, cache):
    three = write_images(tmp_path / "three", classes=["a", "b", "c"])
    with pytest.raises(DataError, match=r"has 3 classes \(a, b, c\); the models classify 10"):
        check_source(str(three))
    check_source(str(three), classes=None)      # the loader itself takes any number
    (three / "test" / "d").mkdir()
    Image.new("RGB", (32, 32)).save(three / "test" / "d" / "0.png")
    with pytest.raises(DataError, match=r"test classes \['d'\] have no training images"):
        check_source(str(three), classes=None)
    notes = tmp_path / "notes"
    (notes / "train" / "a").mkdir(parents=True)
    (notes / "train" / "a" / "readme.txt").write_text("no pictures")
    with pytest.raises(DataError, match=r"no \.jpg .* file in any train/<class>/ folder"):
        check_source(str(notes))


def test_the_real_archive_passes_and_a_cut_copy_is_refused_in_time(cifar_tarball, tmp_path,
                                                                   cache):
    started = time.perf_counter()
    assert archive_layout(cifar_tarball).train == set(
        "airplane automobile bird cat deer dog frog horse ship truck".split())
    whole_seconds = time.perf_counter() - started
    cut = tmp_path / "cifar10-jpeg.tar.gz"
    cut.write_bytes(cifar_tarball.read_bytes()[:-100_000])   # all but the last 0.5 %
    started = time.perf_counter()
    with pytest.raises(DataError, match="is truncated or damaged"):
        check_source(str(cut))
    cut_seconds = time.perf_counter() - started
    # Measured 0.5 s each at load 6, 0.9-1.1 s at load 11 on 2 cores (93 MB of tar inflated).
    assert whole_seconds < CHEAP_SECONDS and cut_seconds < CHEAP_SECONDS


def test_an_archive_decoded_before_is_not_read_again_until_it_changes(tiny, tmp_path, cache,
                                                                      monkeypatch):
    """The decoded-image cache is keyed by path, size and mtime: a cached archive was read
    whole; one cut short in place has another key and is walked again."""
    from search.train.data import load_source
    path = archive(tiny, tmp_path / "tiny.tar.gz")
    load_source(str(path))                       # walked, decoded, cached
    sources._verified.clear()

    def walked(*args):
        raise AssertionError("read again although its decoded images are cached")
    with monkeypatch.context() as patch:
        patch.setattr(sources, "_walk_tar", walked)
        check_source(str(path))
    with open(path, "r+b") as handle:            # cut short in place: another size, mtime
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(DataError, match="is truncated or damaged"):
        check_source(str(path))


def test_a_tar_cut_anywhere_before_its_end_marker_is_refused(tiny, tmp_path, cache):
    whole = archive(tiny, tmp_path / "whole.tar", "w").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        tar.getmembers()
        end = tar.offset   # where the end-of-archive marker starts
    cut = tmp_path / "cut.tar"
    for length in [*range(512, end, 2039), end - 1, end]:
        cut.write_bytes(whole[:length])
        sources._verified.clear()
        with pytest.raises(DataError, match="is truncated or damaged|is not a readable"):
            check_source(str(cut))
    cut.write_bytes(whole[:end + 512])   # the marker is there: every file is
    check_source(str(cut))


def test_damaged_bytes_anywhere_are_one_line_or_pass_never_a_traceback(tiny, tmp_path, cache):
    whole = archive(tiny, tmp_path / "whole.tar", "w").read_bytes()
    rng = np.random.default_rng(2)
    damaged = tmp_path / "damaged.tar"
    for _ in range(60):
        at = int(rng.integers(0, len(whole) - 600))
        damaged.write_bytes(whole[:at] + rng.bytes(512) + whole[at + 512:])
        sources._verified.clear()
        try:
            check_source(str(damaged))
        except DataError as error:
            assert "\n" not in str(error) and str(damaged) in str(error)


def test_a_worker_is_refused_the_study_data_this_machine_lacks_before_torch(tiny, tmp_path,
                                                                           cache):
    """No --data: the worker loads what the study was made with, read from the storage."""
    import search.study
    from search.settings import RunSettings, StudySpec
    url = f"sqlite:///{tmp_path}/s.db"
    gone = tmp_path / "moved-away"
    search.study.open_study(RunSettings(spec=StudySpec(model="mlp", data=str(gone), epochs=1),
                                        storage=url, study="s"))
    process = run_cli(["worker", "s", "--storage", url], code=REPORT_IMPORTS)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 2, err
    assert err == f"optuna-search: error: data source {str(gone)!r} does not exist; use " \
                  "cifar10, synthetic, a folder with train/<class>/ and test/<class>/, or " \
                  "such a .tar.gz\n"
    assert "torch" not in out   # refused before the trainer loads
