"""optuna-search reproduce: five studies in one storage, REPORT.md beside the published
numbers, the 18 figures, and a rerun that runs nothing again."""
from __future__ import annotations

import optuna
import pytest

from search.cli.arguments import build_parser, study_spec
from search.cli import main
from search.reproduce import EXPERIMENTS, BUDGETS, plan

TINY = ["--data", "synthetic", "--train-subset", "40", "--test-subset", "40", "--val-size", "30",
        "--epochs", "1", "--trials", "2"]


def trial_counts(db: str) -> dict[str, int]:
    storage = f"sqlite:///{db}"
    return {name: len(optuna.load_study(study_name=name, storage=storage).trials)
            for name in optuna.get_all_study_names(storage=storage)}


def names(command: str) -> list[str]:
    return [run.study_name for _, run in plan(build_parser().parse_args(command.split()))]


def test_the_full_budget_uses_the_single_commands_names_and_others_their_own():
    full = names("reproduce --budget full")
    assert full == ["mlp-grid-activation", "resnet18-optimizer=adam-grid-lr",
                    "mlpmixer-grid-patch_size", "resnet18", "mlpmixer"]
    # a study never mixes two budgets
    assert names("reproduce") == [f"{name}-small" for name in full]
    assert names("reproduce --epochs 3")[3] == "resnet18-epochs3-train500-test500-val250"
    # the single command's own spec is the full budget's: the same study, either way
    runs = plan(build_parser().parse_args(["reproduce", "--budget", "full"]))
    assert runs[1][1].spec == study_spec(build_parser().parse_args(
        "resnet18 --set optimizer=adam --grid lr=0.1,0.01,0.001,0.0001,0.00001".split()))


def test_small_budget_is_small_and_full_is_the_reports():
    assert BUDGETS["full"]["epochs"] == 30 and BUDGETS["full"]["trials"] == 30
    assert BUDGETS["full"]["train_subset"] is None
    assert BUDGETS["small"]["train_subset"] <= 1000 and BUDGETS["small"]["epochs"] <= 3


@pytest.mark.slow
def test_reproduce_writes_the_report_and_resumes(tmp_path, capsys):
    db, out = tmp_path / "r.db", tmp_path / "out"
    argv = ["reproduce", "-o", str(out), "--storage", f"sqlite:///{db}", *TINY]
    assert main(argv) == 0
    counts = trial_counts(str(db))
    suffix = "-epochs1-train40-test40-val30"  # the budget this test asked for
    assert counts == {f"mlp-grid-activation{suffix}": 3,
                      f"resnet18-optimizer=adam-grid-lr{suffix}": 5,
                      f"mlpmixer-grid-patch_size{suffix}": 3, f"resnet18{suffix}": 2,
                      f"mlpmixer{suffix}": 2}

    report = (out / "REPORT.md").read_text()
    for e in EXPERIMENTS:
        assert f"## {e.number}. {e.title}" in report
    assert "0.8911" in report and "0.7637" in report        # published best test accuracies
    assert "2,310,938" in report                             # published patch-16 parameters
    assert report.count("Validation minus test accuracy") == 5
    figures = {p.name.split("_")[0] for p in (out / "figures").iterdir()}
    assert {f"fig{n:02d}" for n in range(1, 19)} <= figures
    html = (out / "report.html").read_text()
    assert "<script src=" not in html and html.count("Plotly.newPlot") >= 18

    capsys.readouterr()
    assert main(argv) == 0                                   # a rerun resumes: nothing new
    assert trial_counts(str(db)) == counts
    assert "every grid point is already done" in capsys.readouterr().out


def test_reproduce_bad_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["reproduce", "-o", str(out), "--storage", "nope://x", *TINY])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.count("\n") == 1


def test_experiments_picks_which_of_the_five_run(capsys):
    assert names("reproduce --budget full --experiments 3,1") == [
        "mlp-grid-activation", "mlpmixer-grid-patch_size"]
    assert main(["reproduce", "--experiments", "1,6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiment numbers 1-5" in err[0]
