"""`optuna-search MODEL ...` end to end, in-process on synthetic data with the mlp (seconds a
trial): persisted studies and their curves, resuming, grids, samplers and pruners, failures
inside a trial, Ctrl-C, progress lines, `studies`, and bad input (exit 2, nothing written)."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

import search.cli.commands
import search.launch
import search.objective
import search.study
from reports.study_data import study_record
from reports.trial_data import (RESULTS, artifact_id, significant, trial_config, trial_curves,
                                trial_value)
from search.cli import main
from search.settings import RunSettings, StudySpec
from storage import artifact_dir

from helpers import REPO, running_with_an_epoch, table_rows

CURVES = ("train_loss", "train_acc", "val_loss", "val_acc", "train_seconds", "val_seconds")
# What the dashboard's trial page shows (user attributes); the rest is bookkeeping.
TRIAL_ATTRS = ("model_size", "best_epoch", "max_train_acc", "max_val_acc")
TEST_ATTRS = ("test_acc", "test_loss")
BOOKKEEPING = ("epochs_run", "avg_train_seconds", "avg_val_seconds", "test_seconds", "run")
SPEC_KEYS = ("model", "space", "fixed", "grid", "epochs", "data", "seed", "sampler", "pruner")
# number, state, val acc, epochs, seconds, then the parameters
TRIAL_LINE = re.compile(r"^trial +(\d+) (COMPLETE|PRUNED|FAIL) +val_acc=(\S+) epochs=\d+ +"
                        r"[\d.]+s +batch_size=\d+ ")


# A small MLP on a few synthetic images: trials of well under a second.
SMALL = ("--set", "hidden_sizes=16", "--train-subset", "100", "--val-size", "50",
         "--test-subset", "100")


def score_trials(monkeypatch, value_of) -> None:
    """Training as usual, but the val acc the pruner sees at every epoch of the n-th trial
    trained is value_of(n)."""
    real_train = search.objective.train
    trained = []

    def scripted(model, config, data, *, on_epoch, **kwargs):
        trained.append(config)
        value = value_of(len(trained))

        def report(result):
            result.epochs[-1].val_acc = value
            return on_epoch(result)
        return real_train(model, config, data, on_epoch=report, **kwargs)

    monkeypatch.setattr(search.objective, "train", scripted)


@pytest.fixture(autouse=True)
def _artifacts_beside_the_storage(monkeypatch):
    monkeypatch.delenv("OPTUNA_SEARCH_ARTIFACTS", raising=False)


def run(*argv: str) -> tuple[int, str, str]:
    """main(argv) in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def optuna_search(model: str, url: str, *options: str, epochs: int = 1
                  ) -> tuple[int, str, str]:
    return run(model, "--data", "synthetic", "--epochs", str(epochs), "--storage", url,
               *options)


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


@pytest.fixture(scope="module")
def three_trials(tmp_path_factory):
    """A 3-trial mlp study of 2 epochs a trial: (storage url, its folder, exit code, stdout)."""
    folder = tmp_path_factory.mktemp("three")
    url = f"sqlite:///{folder}/s.db"
    code, out, _ = optuna_search("mlp", url, "--trials", "3", epochs=2)
    return url, folder, code, out


def test_a_three_trial_study_persists_its_curves_and_artifacts(three_trials):
    url, folder, code, _ = three_trials
    assert code == 0
    study = load(url, "mlp")
    record = study_record(study)  # the spec, written once, out of the study card's way
    assert set(study.user_attrs) == {"about", "budget", "data_sizes", "target_trials", "runs"}
    assert set(SPEC_KEYS) <= set(record["spec"])
    assert record["spec"]["model"] == "mlp" and record["spec"]["space"] == "report"
    assert record["spec"]["epochs"] == 2 and record["spec"]["seed"] == 0
    assert record["sampler"]["name"] == "tpe" and "n_startup_trials" in record["sampler"]
    assert record["pruner"]["name"] == "hyperband"  # the default for a new study
    assert study.user_attrs["target_trials"] == 3 and study.metric_names == ["val_acc"]

    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for trial in trials:
        attrs = trial.user_attrs
        assert set(TRIAL_ATTRS) <= set(attrs) <= set(RESULTS) | {"prune_reason", "value_note"}
        curves = trial_curves(trial)
        assert trial_config(trial)["epochs"] == 2 and "curves" not in attrs  # not on the page
        assert all(len(curves[name]) == trial_value(trial, "epochs_run") for name in CURVES)
        assert trial_value(trial, "max_val_acc") == max(curves["val_acc"])   # full, for reports
        assert attrs["max_val_acc"] == significant(max(curves["val_acc"]))  # rounded, for the page
        if trial.state == TrialState.COMPLETE:
            assert trial_value(trial, "epochs_run") == 2
            assert trial.value == trial_value(trial, "max_val_acc")
            assert set(TEST_ATTRS) <= set(attrs) and 0 <= attrs["test_acc"] <= 1
            assert all(trial_value(trial, name) is not None for name in BOOKKEEPING)
            for name in ("first_layer.npy", "first_layer.png", "acc_curves.svg",
                         "loss_curves.svg"):   # Optuna's own record
                stored = artifact_dir(url) / artifact_id(trial, name)
                assert stored.is_file() and stored.stat().st_size > 0
    assert artifact_dir(url) == folder / "s.db-artifacts"
    # checkpoints every 60 s: these short trials wrote none, and no file is left behind
    checkpoints = folder / "s.db-artifacts" / "checkpoints"
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == []


def test_progress_shows_each_trial_then_the_best_and_the_report_command(three_trials):
    url, _, _, out = three_trials
    lines = [line for line in out.splitlines() if TRIAL_LINE.match(line)]
    assert [TRIAL_LINE.match(line).group(1) for line in lines] == ["0", "1", "2"]
    best = load(url, "mlp").best_trial
    assert f"best: trial {best.number} val_acc={best.value:.4f}" in out
    assert out.rstrip().endswith(f"optuna-search report mlp --top 8 --storage {url}")


def test_studies_lists_name_model_trials_per_state_and_best_val_acc(three_trials):
    url, _, _, _ = three_trials
    code, out, err = run("studies", "--storage", url)
    assert code == 0 and not err
    study = load(url, "mlp")
    counts = {s: sum(t.state == s for t in study.trials) for s in TrialState}
    [values] = table_rows(out)
    assert values["study"] == "mlp" and values["model"] == "mlp"
    assert int(values["complete"]) == counts[TrialState.COMPLETE]
    assert int(values["pruned"]) == counts[TrialState.PRUNED]
    assert int(values["trials"]) == len(study.trials)      # what optuna-dashboard lists
    assert "running" not in values                         # no study has one: left out
    assert float(values["best val"]) == pytest.approx(study.best_value, abs=1e-4)
    assert int(values["of trial"]) == study.best_trial.number
    assert max(len(line) for line in out.splitlines()) <= 80


def test_studies_on_a_missing_file_creates_nothing(tmp_path):
    code, out, err = run("studies", "--storage", f"sqlite:///{tmp_path}/typo.db")
    assert code == 2 and err.count("\n") == 1 and "no storage" in err
    assert list(tmp_path.iterdir()) == []


def test_running_again_with_a_larger_target_adds_trials_to_the_same_study(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    assert optuna_search("mlp", url, "--trials", "1")[0] == 0
    code, out, _ = optuna_search("mlp", url, "--trials", "2")
    assert code == 0 and "1 of 2 trials finished" in out
    assert optuna.get_all_study_names(storage=url) == ["mlp"]
    assert [t.number for t in load(url, "mlp").trials] == [0, 1]


def test_a_grid_runs_each_point_exactly_once_over_two_invocations(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    grid = ("--grid", "activation=relu,sigmoid,tanh")
    assert optuna_search("mlp", url, *grid, "--trials", "2")[0] == 0
    assert optuna_search("mlp", url, *grid)[0] == 0
    code, out, _ = optuna_search("mlp", url, *grid)
    assert code == 0 and "every grid point is already done; nothing to run" in out

    study = load(url, "mlp-grid-activation")
    assert sorted(t.params["activation"] for t in study.trials) == ["relu", "sigmoid", "tanh"]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert set(study.trials[0].params) == {"activation"}  # nothing else is searched


@pytest.mark.parametrize("argv, name, fixed, grid", [
    ("mlp --grid activation=relu,sigmoid,tanh", "mlp-grid-activation", {},
     {"activation": ["relu", "sigmoid", "tanh"]}),
    ("resnet18 --set optimizer=adam --grid lr=0.1,0.01,0.001,0.0001,0.00001",
     "resnet18-optimizer=adam-grid-lr", {"optimizer": "adam"},
     {"lr": [0.1, 0.01, 0.001, 0.0001, 0.00001]}),
    ("mlpmixer --grid patch_size=4,8,16", "mlpmixer-grid-patch_size", {},
     {"patch_size": [4, 8, 16]}),
])
def test_the_reports_three_sweeps_parse(argv, name, fixed, grid, monkeypatch):
    seen = []
    monkeypatch.setattr(search.launch, "run_search", lambda settings: seen.append(settings) or 0)
    points = len(next(iter(grid.values())))
    assert run(*argv.split()) == (0, f"study {name!r} in optuna-search.db: {points} grid points "
                                     "of 30 epochs; loading...\n", "")   # the first line only
    (settings,) = seen
    assert (settings.study_name, settings.spec.fixed, settings.spec.grid) == (name, fixed, grid)
    assert settings.trials is None  # a grid runs every point not yet done
    assert settings.storage == "sqlite:///optuna-search.db" and settings.spec.epochs == 30


@pytest.mark.parametrize("sampler, pruner", [("tpe", "median"), ("random", "hyperband"),
                                             ("gp", "none")])
def test_each_sampler_and_pruner_runs_and_is_recorded(sampler, pruner, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    code, _, _ = optuna_search("mlp", url, "--trials", "1", "--sampler", sampler,
                               "--pruner", pruner, "--seed", "3")
    assert code == 0
    record = study_record(load(url, "mlp"))
    study = load(url, "mlp")
    assert record["sampler"]["name"] == sampler and record["spec"]["seed"] == 3
    assert record["pruner"]["name"] == pruner
    assert study.trials[0].state == TrialState.COMPLETE


def test_timeout_stops_starting_trials(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    # Checked after each trial, never before the first: under load the start-up alone
    # outlasts 0.01 s, and the process still runs its one trial.
    code, out, _ = optuna_search("mlp", url, "--trials", "5", "--timeout", "0.01")
    assert code == 0 and "--timeout reached" in out
    assert len(load(url, "mlp").trials) == 1


def test_the_wide_space_samples_lr_and_weight_decay_log_uniformly(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    assert optuna_search("mlp", url, "--trials", "1", "--space", "wide")[0] == 0
    study = load(url, "mlp")
    assert study_record(study)["spec"]["space"] == "wide"
    lr = study.trials[0].distributions["lr"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
    assert (lr.low, lr.high) == (0.0001, 0.075)


def test_a_diverging_trial_ends_pruned_and_says_why(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    code, out, _ = optuna_search("mlp", url, "--trials", "1", "--set", "lr=10", "--set",
                                 "optimizer=sgd", "--set", "activation=relu", "--set",
                                 "batch_size=64", epochs=2)
    assert code == 0
    trial = load(url, "mlp").trials[0]
    assert trial.state == TrialState.PRUNED
    assert "loss became" in trial.user_attrs["diverged"]
    assert "PRUNED" in out and "loss became" in out
    assert "no trial completed yet" in out


def test_a_pruned_trials_line_says_at_which_epoch_and_against_what(tmp_path, monkeypatch):
    """MedianPruner: after 5 complete trials, a trial whose best val acc at an epoch is below
    the median of theirs there stops; its line (and its prune_reason) gives both numbers."""
    score_trials(monkeypatch, lambda n: 0.5 if n <= 5 else 0.125 if n == 6 else 0.75)
    url = f"sqlite:///{tmp_path}/s.db"
    code, out, _ = optuna_search("mlp", url, "--trials", "6", "--sampler", "random",
                                 "--pruner", "median", *SMALL, epochs=2)
    assert code == 0
    pruned = [t for t in load(url, "mlp").trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 1
    reason = ("pruned at epoch 1: best val acc 0.1250 < median 0.5000 of 5 complete trials")
    assert pruned[0].user_attrs["prune_reason"] == reason
    line = next(line for line in out.splitlines() if " PRUNED " in line)
    assert TRIAL_LINE.match(line) and line.endswith(f"({reason})")
    best = next(line for line in out.splitlines() if line.startswith("best: "))
    params = load(url, "mlp").best_trial.params
    assert "{" not in best and all(f" {key}=" in best for key in params)   # key=value


@pytest.mark.parametrize("epochs", [1, 2])
def test_hyperband_prunes_before_the_last_epoch_never_at_it(epochs, tmp_path, monkeypatch):
    """Stopping a trial after its last epoch saves nothing and would lose its result: with
    one epoch a trial scoring far below the others completes; with two it is pruned at 1."""
    score_trials(monkeypatch, lambda n: 0.125 if n == 6 else 0.5 + 0.01 * n)
    url = f"sqlite:///{tmp_path}/s.db"
    code, _, err = optuna_search("mlp", url, "--trials", "6", "--sampler", "random",
                                 "--pruner", "hyperband", *SMALL, "--quiet", epochs=epochs)
    assert code == 0, err
    states = [t.state for t in load(url, "mlp").trials]
    assert len(states) == 6
    if epochs == 1:
        assert states == [TrialState.COMPLETE] * 6
    else:
        assert states[5] == TrialState.PRUNED
        assert load(url, "mlp").trials[5].last_step == 1


def test_an_error_in_one_trial_fails_it_and_the_next_run_retries_that_point(
        tmp_path, monkeypatch):
    real_train = search.objective.train

    def out_of_memory_at_1024(model, config, *args, **kwargs):
        if config.batch_size == 1024:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        return real_train(model, config, *args, **kwargs)

    url = f"sqlite:///{tmp_path}/s.db"
    grid = ("--grid", "batch_size=1024,128,256", "--seed", "0")
    monkeypatch.setattr(search.objective, "train", out_of_memory_at_1024)
    code, out, err = optuna_search("mlp", url, *grid)
    assert code == 1  # the study went on after each failure, then said which point failed
    study = load(url, "mlp-grid-batch_size")
    tries = [(t.params["batch_size"], t.state) for t in study.trials]
    assert tries.count((1024, TrialState.FAIL)) == 3        # queued again, 3 tries in all
    assert {(128, TrialState.COMPLETE), (256, TrialState.COMPLETE)} <= set(tries)
    assert len(tries) == 5
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert failed.user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert "FAIL" in out and "OutOfMemoryError" in out
    assert "grid points that failed every try: batch_size=1024" in err

    monkeypatch.setattr(search.objective, "train", real_train)  # the memory is there now,
    # but the point used its tries: it stays FAIL and is reported, nothing reruns silently
    code, out, err = optuna_search("mlp", url, *grid)
    assert code == 1 and "nothing to run" in out and "batch_size=1024" in err
    assert len(load(url, "mlp-grid-batch_size").trials) == 5


def test_a_grid_point_that_fails_once_is_retried_in_the_same_run(tmp_path, monkeypatch):
    real_train = search.objective.train
    failures = []

    def out_of_memory_once(model, config, *args, **kwargs):
        if config.batch_size == 1024 and not failures:
            failures.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        return real_train(model, config, *args, **kwargs)

    url = f"sqlite:///{tmp_path}/s.db"
    monkeypatch.setattr(search.objective, "train", out_of_memory_once)
    assert optuna_search("mlp", url, "--grid", "batch_size=1024,128")[0] == 0
    tries = [(t.params["batch_size"], t.state) for t in load(url, "mlp-grid-batch_size").trials]
    assert sorted(tries) == [(128, TrialState.COMPLETE), (1024, TrialState.COMPLETE),
                             (1024, TrialState.FAIL)]


@pytest.mark.parametrize("other", ["mlpmixer", "mlp --space wide", "mlp --set optimizer=adam"])
def test_a_study_made_for_one_model_refuses_another(other, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    search.study.open_study(RunSettings(spec=StudySpec(model="mlp", data="synthetic", epochs=1),
                                        storage=url, study="s"))
    model, *options = other.split()
    code, out, err = optuna_search(model, url, "--study", "s", *options)
    assert code == 2
    assert err.startswith("optuna-search: error: study 's' in ") and "other settings" in err
    assert err.count("\n") == 1
    assert load(url, "s").trials == []


def test_a_study_keeps_its_own_pruner_when_none_is_asked_for(tmp_path):
    """Hyperband is a new study's pruner; a study made with median pruning (before that
    default, or by --pruner median) resumes with median pruning when the command names no
    pruner, and refuses a run that names another one."""
    url = f"sqlite:///{tmp_path}/s.db"
    assert optuna_search("mlp", url, "--study", "s", "--trials", "2", "--pruner", "median",
                         "--quiet")[0] == 0
    code, _, err = optuna_search("mlp", url, "--study", "s", "--trials", "3", "--quiet")
    assert code == 0, err
    study = load(url, "s")
    assert study_record(study)["pruner"]["name"] == "median"
    assert sum(t.state.is_finished() for t in study.trials) == 3
    asked = dataclasses.replace(search.study.recorded_spec(study), pruner="hyperband")
    opened = search.study.open_study(RunSettings(spec=asked, storage=url, study="s",
                                                 pruner_given=False), new_run=False)
    assert opened.spec.pruner == "median"
    assert isinstance(opened.study.pruner, optuna.pruners.MedianPruner)
    code, _, err = optuna_search("mlp", url, "--study", "s", "--trials", "4", "--pruner",
                                 "hyperband", "--quiet")
    assert code == 2 and "pruner hyperband (asked) vs median (study)" in err
    assert sum(t.state.is_finished() for t in load(url, "s").trials) == 3
    # A new study without --pruner: Hyperband.
    assert optuna_search("mlp", url, "--study", "new", "--trials", "1", "--quiet")[0] == 0
    assert study_record(load(url, "new"))["pruner"]["name"] == "hyperband"


def test_ctrl_c_leaves_no_running_trial_and_says_how_to_resume(tmp_path):
    db = tmp_path / "s.db"
    command = [sys.executable, "-m", "search.cli", "mlp", "--data", "synthetic", "--epochs",
               "50", "--trials", "5", "--storage", f"sqlite:///{db}"]
    # Output goes to files: a full pipe nobody reads would block the worker.
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        worker = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=err,  # this tree's
                                  env={**os.environ, "PYTHONPATH": str(REPO)})  # code
        try:
            deadline = time.monotonic() + 120
            # until a trial is mid-training, an epoch done (read without Optuna: the worker
            # may be making the file)
            while running_with_an_epoch(db) == 0:
                assert worker.poll() is None, (tmp_path / "err").read_text()[-2000:]
                assert time.monotonic() < deadline, "no trial started within 120 s"
                time.sleep(0.2)
            worker.send_signal(signal.SIGINT)
            code = worker.wait(timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
    stderr = (tmp_path / "err").read_text()
    assert code == 130, stderr[-2000:]
    assert "Resume with the same command" in stderr and "Traceback" not in stderr
    trials = load(f"sqlite:///{db}", "mlp").trials
    assert trials and all(t.state != TrialState.RUNNING for t in trials)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    queued = [t for t in trials if t.state == TrialState.WAITING]  # resumes with the command
    assert len(failed) == 1 and len(queued) == 1 and queued[0].params == failed[0].params
    # its line: the epochs it ran, its best val acc so far, and that it was queued again
    out = (tmp_path / "out").read_text()
    line = next(line for line in out.splitlines() if line.startswith(
        f"trial {failed[0].number:>3} FAIL "))
    epochs = len(failed[0].intermediate_values)
    best = max(failed[0].intermediate_values.values())
    assert re.match(rf"trial +\d+ FAIL +val_acc={best:.4f} epochs={epochs} +\d+\.\ds +"
                    r"batch_size=", line), line
    assert line.endswith("(interrupted: queued again; the same command resumes it)"), line
    assert "?" not in out and "= -" not in out and "nan" not in out


BAD_INPUT = [
    "nomodel --trials 3",                          # unknown model
    "mlp --set foo=1",                             # unknown parameter
    "mlp --set patch_size=8",                      # a parameter of another model
    "mlp --set lr=abc",                            # ill-typed value
    "mlp --set lr=-1",                             # insane value
    "mlp --set activation=swish",
    "mlp --grid lr=",                              # a grid without values
    "mlp --grid lr",
    "mlp --grid lr=,",
    "mlp --grid activation=relu,swish",
    "mlp --set lr=0.1 --grid lr=0.1,0.01",
    "mlp --grid activation=relu,tanh --enqueue-report",
    "mlp --trials 0",
    "mlp --timeout 0",
    "mlp --storage foo://bar",                     # malformed storage URLs
    "mlp --storage sqlite:///no/such/folder/s.db",
    "mlp --storage postgresql://",
    "mlp --storage sqlite://",                     # in memory: the study would vanish
    "mlp --storage sqlite:///:memory:",
    "mlp --data no-such-folder",                   # missing data
    "mlp --data synthetic --train-subset 5",
]


@pytest.mark.parametrize("argv", BAD_INPUT)
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default storage ./optuna-search.db would land here
    code, out, err = run(*argv.split())
    assert code == 2
    assert err.startswith("optuna-search: error: ") and err.count("\n") == 1, err
    # at most the command's first line, said before the data is loaded (and found bad)
    assert not out or re.fullmatch(r"study '[^']+' in \S+: [^\n]*; loading\.\.\.\n", out), out
    assert os.listdir(tmp_path) == []


def test_cuda_without_a_gpu_is_bad_input(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    monkeypatch.chdir(tmp_path)
    code, _, err = run("mlp", "--data", "synthetic", "--device", "cuda")
    assert code == 2 and err.count("\n") == 1 and "cuda" in err.lower()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv", ["mlp --checkpoint-every -1", "mlp --checkpoint-every soon",
                                  "mlp --storage-patience -5", "mlp --storage-patience later",
                                  "mlp --set schedule=sometimes", "mlp --capture sometimes",
                                  "worker mlp --capture sometimes"])
def test_bad_intervals_and_schedules_are_one_line_exit_2(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(*argv.split())
    assert code == 2 and err.count("\n") == 1 and err.startswith("optuna-search: error: ")
    assert os.listdir(tmp_path) == []


def test_timings_keep_the_first_epoch_apart_and_say_when_a_device_was_shared(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    assert optuna_search("mlp", url, "--trials", "2", "--workers", "2", epochs=3)[0] == 0
    for trial in load(url, "mlp").trials:
        if trial.state != TrialState.COMPLETE:
            continue
        seconds = trial_curves(trial)["train_seconds"]
        assert trial_value(trial, "first_epoch_seconds") == seconds[0]
        assert trial_value(trial, "avg_train_seconds") == pytest.approx(
            sum(seconds[1:]) / len(seconds[1:]))
        assert trial_value(trial, "timing_shared_by") == 2  # two workers on these cores


@pytest.mark.parametrize("options, expected", [([], "auto"), (["--capture", "off"], "off")])
def test_the_capture_setting_reaches_the_trainer(options, expected, tmp_path, monkeypatch):
    seen = []
    real = search.objective.train

    def spy(*args, **kwargs):
        seen.append(kwargs["capture"])
        return real(*args, **kwargs)
    monkeypatch.setattr(search.objective, "train", spy)
    url = f"sqlite:///{tmp_path}/s.db"
    assert optuna_search("mlp", url, "--trials", "1", *options)[0] == 0
    assert seen == [expected]
    # a worker joining the study takes its own setting
    code, _, err = run("worker", "mlp", "--storage", url, "--trials", "2", *options)
    assert code == 0, err
    assert seen == [expected, expected]
    trial = load(url, "mlp").trials[0]
    assert trial_value(trial, "capture_seconds") is None   # eager on the CPU: none captured
