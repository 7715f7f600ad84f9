"""`optuna-search info`: parameters per layer and the total; bad input is one line, exit 2."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from search.cli import main


def info(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(["info", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.mark.parametrize("argv, total", [
    (["mlpmixer", "--set", "patch_size=8"], "2,175,818"),
    (["mlpmixer"], "2,188,298"),
    (["mlpmixer", "--set", "patch_size=16"], "2,310,938"),
    (["resnet18"], "11,173,962"),
])
def test_info_ends_with_the_total(capsys, argv, total):
    code, lines, err = info(capsys, *argv)
    assert code == 0 and err == ""
    assert lines[-1].split() == ["total", total]


def test_info_rows_are_per_layer_and_sum_to_the_total(capsys):
    code, lines, _ = info(capsys, "mlpmixer", "--set", "patch_size=8", "--set", "num_blocks=2")
    assert code == 0
    rows = {name: int(count.replace(",", "")) for name, count in (l.split() for l in lines)}
    total = rows.pop("total")
    assert sum(rows.values()) == total
    assert rows["proj"] == 3 * 256 * 8 * 8 + 256
    assert "blocks.1.token_fc1" in rows and "blocks.2.token_fc1" not in rows


def test_info_mlp_follows_the_hidden_sizes(capsys):
    code, lines, _ = info(capsys, "mlp", "--set", "hidden_sizes=100", "--set", "activation=tanh")
    assert code == 0
    assert lines[-1].split() == ["total", f"{3072 * 100 + 100 + 100 * 10 + 10:,}"]


@pytest.mark.parametrize("argv, says", [
    (["vgg"], "invalid choice: 'vgg'"),
    (["mlpmixer", "--set", "size=8"], "parameter 'size' does not apply to mlpmixer"),
    (["resnet18", "--set", "lr=abc"], "lr='abc': expected a number"),
    (["resnet18", "--set", "activation=relu"], "'activation' does not apply to resnet18"),
    (["mlpmixer", "--set", "patch_size=5"], "must divide the 32-pixel image side"),
    (["mlpmixer", "--set", "patch_size"], "expected KEY=VALUE"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(capsys, argv, says):
    code, lines, err = info(capsys, *argv)
    assert code == 2 and lines == []
    assert err.count("\n") == 1 and err.startswith("optuna-search: error: ")
    assert says in err


@pytest.mark.skipif(shutil.which("optuna-search") is None, reason="not installed (pip install -e .)")
def test_the_console_script_prints_the_same():
    done = subprocess.run(["optuna-search", "info", "mlpmixer", "--set", "patch_size=8"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert re.search(r"^total\s+2,175,818$", done.stdout.strip().splitlines()[-1])


def test_version_is_the_installed_packages(tmp_path):
    from importlib import metadata
    from helpers import run_cli
    process = run_cli(["--version"], cwd=tmp_path)
    out, err = process.communicate(timeout=120)
    try:
        version = metadata.version("optuna-search")
    except metadata.PackageNotFoundError:   # a checkout pip never installed
        version = "(not installed: version unknown)"
    assert process.returncode == 0 and err == ""
    assert out == f"optuna-search {version}\n"
