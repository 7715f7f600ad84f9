"""bench/gpu_check.py, the one script for the GPU machine: its table's verdicts and the
projection of a search cut short (canned numbers), bad input, and the whole script end to end
at tiny sizes on the CPU with the capture off (what the GPU run does, minus the GPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from gpu_table import (FULL, TINY, accuracy_row, project_search, search_row,  # noqa: E402
                       shared_images_per_second, shared_row, speed_row, table)

B128 = FULL["rows"][1]


def measured(graphs: float, common: float = 4.4, eager: float = 4.8, **more) -> dict:
    return {**B128, "common_steady": common, "captured_steady": graphs, "eager_steady": eager,
            "captured_capture_s": 8.4, "captured_capture_failure": None, **more}


def test_a_speed_row_meets_its_targets_or_says_which_it_misses():
    row = speed_row(measured(1.2), tiny=False)
    assert row.verdict == "meets" and "3.7x the common recipe's 4.40 s" in row.measured
    assert row.target == "<= 1.25 s/epoch and >= 3.5x the common recipe"
    short = speed_row(measured(1.3), tiny=False)
    assert short.verdict == "short: 1.30 s > 1.25 s; 3.38x < 3.5x"
    failed = speed_row(measured(4.8, captured_capture_failure="OutOfMemoryError: x"), False)
    assert failed.verdict.startswith("FAILED: capture failed (OutOfMemoryError")
    assert speed_row(measured(1.2), tiny=True).verdict == "n/a (tiny)"


def test_the_accuracy_row_compares_the_last_epochs():
    close = accuracy_row(measured(1.2, captured_val_acc=[0.5] * 9 + [0.838],
                                  eager_val_acc=[0.5] * 9 + [0.837]), tiny=False)
    assert close.verdict == "meets" and "0.10 points apart" in close.measured
    apart = accuracy_row(measured(1.2, captured_val_acc=[0.84], eager_val_acc=[0.83]), False)
    assert apart.verdict == "short: 1.00 points apart"


def shared(*outcomes) -> dict:
    return {"processes": 4, "capture": "auto", "outcomes": list(outcomes)}


def outcome(start=100.0, end=110.0, images=3 * 49_920, **more) -> dict:
    return {"start": start, "end": end, "steady_images": images, "seconds": [9, 3.3, 3.4, 3.3],
            "fraction": 0.243, **more}


def test_the_shared_aggregate_is_all_steady_images_over_the_common_window():
    numbers = shared(outcome(), outcome(start=100.5), outcome(end=109), outcome(end=110.5))
    assert shared_images_per_second(numbers) == pytest.approx(4 * 149_760 / 10.5)
    row = shared_row(numbers, FULL)
    assert row.verdict == "meets" and "57,051 images/s" in row.measured
    assert "0.243 of the GPU" in row.measured


def test_a_failed_or_missing_sharer_gives_no_aggregate():
    failed = shared(outcome(), outcome(), outcome(), {"index": 3, "error": "BrokenBarrierError"})
    assert shared_images_per_second(failed) is None
    assert shared_row(failed, FULL).verdict == "FAILED: BrokenBarrierError"
    assert shared_row(shared(outcome()), FULL).verdict == "FAILED: 1 of 4 reported"


def search_numbers(**more) -> dict:
    return {"exit": 130, "wall_s": 200.0, "first_trial_after_s": 20.0, "epochs_trained": 180,
            "complete": 4, "pruned": 0, "failed": 4, "finished_epochs": [30] * 4,
            "best_test_acc": 0.885, **more}


def test_a_search_cut_short_is_projected_from_its_epochs_per_second():
    # 180 epochs in the 180 s after the first trial: 1 epoch/s; 30 x 30 epochs -> 900 s + 20
    assert project_search(search_numbers(), 30, 30) == {"epochs_per_s": 1.0,
                                                        "unpruned_s": 920.0}
    pruned = project_search(search_numbers(pruned=2, finished_epochs=[30] * 4 + [5, 5]), 30, 30)
    assert pruned["observed_s"] == pytest.approx(20 + 30 * (130 / 6))
    row = search_row(search_numbers(), FULL)
    assert row.verdict == ("projected: short: best test accuracy 0.8850 (so far); "
                           "projected 15.3 min")
    assert "4 of 30 trials finished" in row.measured and "15.3 min without pruning" in row.measured


def test_a_whole_search_is_judged_on_its_own_wall_time_and_accuracy():
    done = search_numbers(exit=0, wall_s=450.0, complete=12, pruned=18, best_test_acc=0.905)
    row = search_row(done, FULL)
    assert row.verdict == "meets" and row.measured.startswith("30 trials (18 pruned) in 7.5 min")
    late = search_row({**done, "wall_s": 600.0}, FULL)
    assert late.verdict == "short: 10.0 min"


def test_the_table_is_one_markdown_table():
    rows = [speed_row(measured(1.2), False), search_row(search_numbers(), FULL)]
    lines = table(rows).splitlines()
    assert lines[0] == "| what | measured | target | verdict |" and len(lines) == 4
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines[2:])


def test_the_tiny_plan_has_every_row_of_the_full_one():
    assert [r.keys() for r in TINY["rows"]] == [r.keys() for r in FULL["rows"]]
    assert FULL["search"][:1] == ["resnet18"] and FULL["search_trials"] == 30


def gpu_check(*argv: str, out: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OUT": str(out)})


def test_unknown_sections_are_refused_before_anything_runs(tmp_path):
    done = gpu_check("--sections", "speed,everything", out=tmp_path / "out", timeout=120)
    assert done.returncode == 2 and "unknown everything" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_whole_script_runs_at_tiny_sizes_on_the_cpu(tmp_path):
    """What the GPU run does, minus the GPU: every section, one table, the files in $OUT."""
    out = tmp_path / "out"
    # A budget no loaded CPU runs out of (the default 420 s is the GPU's): this test checks the
    # sections, and each one starts only while the budget lasts.
    done = gpu_check("--tiny", "--device", "cpu", "--capture", "off", "--data", "synthetic",
                     "--budget", "3000", out=out, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    table_text = done.stdout[done.stdout.index("| what |"):]
    assert table_text.strip() == (out / "gpu_check.md").read_text().split("\n\n", 1)[1].strip()
    assert table_text.count("\n| ") == 8        # checks, 4 speed, accuracy, shared, search
    assert "skipped: no CUDA" in table_text and "FAILED" not in table_text
    blob = json.loads((out / "gpu_check.json").read_text())
    assert set(blob["sections"]) == {"checks", "speed", "shared", "search"}
    assert blob["sections"]["search"]["complete"] == 4
    assert len(blob["sections"]["shared"]["outcomes"]) == 4
    assert (out / "search.db").exists() and (out / "search.log").exists()
