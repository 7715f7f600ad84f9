"""`optuna-search audit`: pruned trials of a real (tiny) search trained to the full budget in a
sibling study, linked to their numbers, the study itself untouched; resumable (a rerun trains
nothing, a SIGKILLed audit resumes), --workers, two audits at once, PostgreSQL; the report's
audit section; bad input."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import sqlite3
import time
import uuid

import optuna
import pytest
import torch
from optuna.trial import TrialState

import search.objective

from helpers import FAST_HEARTBEAT, query, run_cli, wait_until
from pg_server import pg_url  # noqa: F401 (fixture)
from reports.audit import AUDIT_OF, at_pruning
from reports.trial_data import trial_config, trial_value
from search.audit import audit_candidates
from search.cli import main
from storage import open_storage
from test_faults import HANDLER_INSTALLED_SAYS_GO

EPOCHS = 6
# A real random search with the median pruner on the tiny synthetic MLP (a trial takes well
# under a second): after 5 complete trials it prunes at epoch 1 (the warm-up is epochs // 5).
SEARCH = ["mlp", "--data", "synthetic", "--train-subset", "100", "--test-subset", "100",
          "--val-size", "50", "--set", "hidden_sizes=16", "--sampler", "random",
          "--pruner", "median", "--epochs", str(EPOCHS), "--trials", "14", "--quiet"]
# Each epoch of a trial sleeps first: an audit is SIGKILLed while it trains, not after.
SLOW_EPOCHS = """
import time
import search.objective
real_train = search.objective.train
def slow(model, config, data, *, on_epoch, **kwargs):
    def wait_then(result):
        time.sleep(1.0)
        return on_epoch(result)
    return real_train(model, config, data, on_epoch=wait_then, **kwargs)
search.objective.train = slow
"""

# Audit trials running with an epoch reported, in the study file.
AUDIT_RUNNING = ("SELECT COUNT(DISTINCT t.trial_id) FROM trials t JOIN studies s ON s.study_id "
                 "= t.study_id JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                 "WHERE s.study_name = 'mlp-audit' AND t.state = 'RUNNING'")


def run(*argv: str) -> tuple[int, str, str]:
    """main(argv) in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """The folder of a finished study 'mlp' (s.db and its artifacts) with pruned trials."""
    folder = tmp_path_factory.mktemp("searched")
    code, out, err = run(*SEARCH, "--storage", f"sqlite:///{folder}/s.db")
    assert code == 0, err
    pruned = optuna.load_study(study_name="mlp", storage=f"sqlite:///{folder}/s.db").get_trials(
        states=(TrialState.PRUNED,))
    assert len(pruned) >= 4, out   # the search must have pruned for the audit to mean much
    assert len(optuna.load_study(study_name="mlp", storage=f"sqlite:///{folder}/s.db").trials) \
        == 14
    return folder


def copy_study(folder, to) -> str:
    """A copy of the searched study file (SQLite's backup: the file alone may lack what its
    write-ahead log holds while this process keeps the storage open), and its artifacts."""
    with contextlib.closing(sqlite3.connect(folder / "s.db")) as source, \
            contextlib.closing(sqlite3.connect(to / "s.db")) as copy:
        source.backup(copy)
    shutil.copytree(folder / "s.db-artifacts", to / "s.db-artifacts")
    return f"sqlite:///{to}/s.db"


@pytest.fixture
def db(searched, tmp_path):
    """A copy of the searched study for one test to audit: its storage URL."""
    return copy_study(searched, tmp_path)


@pytest.fixture(scope="module")
def audited_once(searched, tmp_path_factory):
    """A copy of the searched study with one pruned trial audited: its storage URL."""
    url = copy_study(searched, tmp_path_factory.mktemp("audited"))
    code, _, err = run("audit", "mlp", "--pruned", "1", "--storage", url, "--quiet")
    assert code == 0, err
    return url


def load(url: str, name: str = "mlp") -> optuna.Study:
    storage = url if url.startswith("sqlite") else open_storage(url, heartbeat=False)
    return optuna.load_study(study_name=name, storage=storage)


def snapshot(study: optuna.Study) -> tuple:
    """Everything of a study an audit must leave as it was."""
    trials = [(t.number, t.state, t.value, t.params, t.user_attrs, t.system_attrs,
               t.intermediate_values, t.datetime_start, t.datetime_complete)
              for t in study.get_trials()]
    return trials, study.user_attrs, study._storage.get_study_system_attrs(study._study_id)


def best_looking(study: optuna.Study, k: int) -> list[int]:
    """The k pruned trials with the best validation accuracy by their pruning epoch."""
    pruned = [t for t in study.get_trials(states=(TrialState.PRUNED,))]
    return [t.number for t in sorted(pruned, key=lambda t: (-at_pruning(t)[1], -t.last_step,
                                                            t.number))][:k]


def audited(url: str) -> dict[int, list[optuna.trial.FrozenTrial]]:
    """Pruned trial's number -> its trials in the audit study."""
    found: dict[int, list] = {}
    for trial in load(url, "mlp-audit").get_trials():
        found.setdefault(trial.user_attrs[AUDIT_OF], []).append(trial)
    return found


def complete_once(url: str, numbers) -> None:
    """Each of `numbers` has exactly one COMPLETE audit trial, trained to the full budget."""
    found = audited(url)
    assert set(found) == set(numbers)
    for number, trials in found.items():
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == 1, (number, [t.state for t in trials])
        assert trial_value(complete[0], "epochs_run") == EPOCHS
        assert len(complete[0].intermediate_values) == EPOCHS


def test_the_best_looking_pruned_trials_are_trained_to_the_end_and_linked(db):
    before = snapshot(load(db))
    chosen = best_looking(load(db), 2)
    code, out, err = run("audit", "mlp", "--pruned", "2", "--storage", db, "--quiet")
    assert code == 0, err
    complete_once(db, chosen)
    study = load(db)
    for number, (trial,) in audited(db).items():
        original = study.trials[number]
        assert original.state == TrialState.PRUNED and original.last_step < EPOCHS
        # Its exact configuration (parameters, --set values, epochs), trained with the same
        # seed on the same split: the epochs the original ran come out the same.
        assert trial_config(trial) == trial_config(original)
        assert trial.params == original.params
        assert {e: trial.intermediate_values[e] for e in original.intermediate_values} == \
            original.intermediate_values
        assert trial.user_attrs["test_acc"] is not None
    assert snapshot(load(db)) == before   # the study's trials, counts and attributes
    assert f"trials {chosen[0]} (" in out and "pruning audit: 2 pruned trials trained to " \
        f"{EPOCHS} epochs;" in out

    # Again: everything is trained; nothing loads, nothing is trained.
    trials = len(load(db, "mlp-audit").trials)
    code, out, err = run("audit", "mlp", "--pruned", "2", "--storage", db)
    assert code == 0, err
    assert "nothing to train" in out and "data synthetic" not in out
    assert len(load(db, "mlp-audit").trials) == trials
    # A larger K adds the next one and keeps the two.
    assert run("audit", "mlp", "--pruned", "3", "--storage", db, "--quiet")[0] == 0
    complete_once(db, best_looking(load(db), 3))
    assert snapshot(load(db)) == before


def test_the_report_has_an_audit_section(db, tmp_path):
    code, out, _ = run("report", "mlp", "--storage", db)
    assert code == 0 and "audit" not in out.lower()   # no audit study, no section
    assert run("audit", "mlp", "--pruned", "3", "--storage", db, "--quiet")[0] == 0
    study = load(db)
    complete = sorted((t.value for t in study.get_trials(states=(TrialState.COMPLETE,))),
                      reverse=True)
    finals = [trials[0].value for trials in audited(db).values()]
    top = sum(final > complete[7] for final in finals) if len(complete) >= 8 else len(finals)
    beat = sum(final > complete[0] for final in finals)
    line = (f"pruning audit: 3 pruned trials trained to {EPOCHS} epochs; {top} would have "
            f"entered the top 8, {beat} beat the best")
    code, out, _ = run("report", "mlp", "--storage", db)
    assert code == 0 and "## Pruning audit" in out and line in out
    section = out[out.index("## Pruning audit"):]
    for number, (trial,) in audited(db).items():
        row = next(r for r in section.splitlines() if r.startswith(f"| {number} |"))
        assert f"{trial.value:.4f}" in row and f"{trial.user_attrs['test_acc']:.4f}" in row
        assert f"{at_pruning(study.trials[number])[1]:.4f}" in row
    page = tmp_path / "r.html"
    assert run("report", "mlp", "--storage", db, "--format", "html", "-o", str(page))[0] == 0
    text = page.read_text()
    assert "<h2>Pruning audit</h2>" in text and line in text
    assert "first epochs equal the pruned run&#x27;s in 3 of 3." in text   # same config, seed
    code, out, _ = run("report", "mlp", "--storage", db, "--format", "csv")
    assert code == 0 and "audit" not in out   # the CSV stays one table


def test_an_audit_trial_that_fails_is_retried_with_its_configuration(db, monkeypatch):
    """Not a new sample in its place: an audit samples nothing (a grid's rule)."""
    real_train = search.objective.train
    failures = []

    def out_of_memory_once(model, config, *args, **kwargs):
        if not failures:
            failures.append(config)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        return real_train(model, config, *args, **kwargs)

    monkeypatch.setattr(search.objective, "train", out_of_memory_once)
    code, out, err = run("audit", "mlp", "--pruned", "2", "--storage", db, "--quiet")
    assert code == 0, err
    complete_once(db, best_looking(load(db), 2))
    trials = load(db, "mlp-audit").trials
    assert [t.state for t in trials].count(TrialState.FAIL) == 1 and len(trials) == 3
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == failed.number)
    assert retry.params == failed.params and retry.state == TrialState.COMPLETE


def test_workers_and_a_random_choice(db):
    before = snapshot(load(db))
    audit = run_cli(["audit", "mlp", "--pruned", "4", "--random", "--seed", "3", "--workers",
                     "2", "--storage", db, "--quiet"])
    out, err = audit.communicate(timeout=300)
    assert audit.returncode == 0, err
    assert "[w0] trial" in out or "[w1] trial" in out   # trained by the worker processes
    numbers = list(audited(db))
    assert len(numbers) == 4
    complete_once(db, numbers)
    assert snapshot(load(db)) == before
    # The same seed picks the same trials: nothing more to train.
    code, out, _ = run("audit", "mlp", "--pruned", "4", "--random", "--seed", "3",
                       "--storage", db)
    assert code == 0 and "nothing to train" in out and "at random" in out


def test_two_audits_at_once_train_each_trial_once(db):
    audits = [run_cli(["audit", "mlp", "--pruned", "3", "--storage", db, "--quiet"])
              for _ in range(2)]
    for audit in audits:
        _, err = audit.communicate(timeout=300)
        assert audit.returncode == 0, err
    complete_once(db, best_looking(load(db), 3))
    assert len(load(db, "mlp-audit").trials) == 3   # no try twice, nothing failed


def test_a_sigkilled_audit_resumes_and_trains_each_trial_once(db, monkeypatch):
    path = db.removeprefix("sqlite:///")
    first = run_cli(["audit", "mlp", "--pruned", "2", "--storage", db, "--quiet"],
                    code=SLOW_EPOCHS, **FAST_HEARTBEAT)
    wait_until(lambda: query(path, AUDIT_RUNNING, 0) >= 1, 120, "an audit trial mid-training")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    killed = [t for t in load(db, "mlp-audit").trials if t.state == TrialState.RUNNING]
    assert len(killed) == 1 and 1 <= len(killed[0].intermediate_values) < EPOCHS

    for name, value in FAST_HEARTBEAT.items():
        monkeypatch.setenv(name, value)
    code, out, err = run("audit", "mlp", "--pruned", "2", "--storage", db, "--quiet")
    assert code == 0, err
    complete_once(db, best_looking(load(db), 2))
    trials = load(db, "mlp-audit").trials
    assert [t.state for t in trials].count(TrialState.FAIL) == 1   # the killed try
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number)
    assert retry.user_attrs[AUDIT_OF] == killed[0].user_attrs[AUDIT_OF]
    assert retry.state == TrialState.COMPLETE


def test_ctrl_c_stops_an_audit_and_the_same_command_resumes(db):
    path = db.removeprefix("sqlite:///")
    first = run_cli(["audit", "mlp", "--pruned", "1", "--storage", db, "--quiet"],
                    code=SLOW_EPOCHS)
    wait_until(lambda: query(path, AUDIT_RUNNING, 0) >= 1, 120, "an audit trial mid-training")
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130
    err = first.stderr.read()
    assert "interrupted" in err and "Traceback" not in err
    states = sorted(t.state.name for t in load(db, "mlp-audit").trials)
    assert states == ["FAIL", "WAITING"]   # failed and queued again; nothing left RUNNING
    code, _, err = run("audit", "mlp", "--pruned", "1", "--storage", db, "--quiet")
    assert code == 0, err
    complete_once(db, best_looking(load(db), 1))


def test_ctrl_c_at_any_moment_of_an_audits_first_seconds_is_one_line_and_exit_130(db):
    """Reading the study, loading torch and the data, queueing: no traceback, ever, and
    whatever was queued is trained once by the next audit."""
    path = db.removeprefix("sqlite:///")
    for delay in (0.0, 0.3, 1.0, 2.0, 3.5, 5.0):
        # Slow epochs: the audit is still at work at the last delay however fast the machine
        # (an audit that had finished before the signal would rightly exit 0).
        audit = run_cli(["audit", "mlp", "--pruned", "2", "--storage", db, "--quiet"],
                        HANDLER_INSTALLED_SAYS_GO + SLOW_EPOCHS)
        assert audit.stderr.readline() == "go\n"
        time.sleep(delay)  # a moment of the start-up, not a condition: any moment must do
        audit.send_signal(signal.SIGINT)
        _, err = audit.communicate(timeout=120)
        assert audit.returncode == 130, (delay, err[-2000:])
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (delay, err)
        assert query(path, "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'", 0) == 0
    assert run("audit", "mlp", "--pruned", "2", "--storage", db, "--quiet")[0] == 0
    complete_once(db, best_looking(load(db), 2))


def test_an_audit_on_postgresql(pg_url, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OPTUNA_SEARCH_ARTIFACTS", str(tmp_path / "artifacts"))
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    try:
        assert run(*SEARCH, "--trials", "10", "--storage", pg_url, "--study", name)[0] == 0
        before = snapshot(load(pg_url, name))
        code, out, err = run("audit", name, "--pruned", "2", "--storage", pg_url, "--quiet")
        assert code == 0, err
        found = {t.user_attrs[AUDIT_OF]: t for t in load(pg_url, f"{name}-audit").trials}
        assert sorted(found) == sorted(best_looking(load(pg_url, name), 2))
        assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == EPOCHS
                   for t in found.values())
        assert snapshot(load(pg_url, name)) == before
        assert "nothing to train" in run("audit", name, "--pruned", "2", "--storage",
                                         pg_url)[1]
    finally:
        storage = open_storage(pg_url, heartbeat=False)
        for study in (name, f"{name}-audit"):
            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=study, storage=storage)


def test_a_grid_studys_pruned_points_are_audited_alone(tmp_path):
    """The audit study keeps the grid's spec (its trials suggest as the grid's did) but runs
    only the pruned points queued in it, never the rest of the grid."""
    url = f"sqlite:///{tmp_path}/g.db"
    grid = [*SEARCH, "--epochs", "5", "--storage", url, "--set", "optimizer=adam", "--grid",
            "lr=0.01,0.025,0.05,0.075,0.001,0.0025,0.0075,0.0001,0.00025,0.00075"]
    assert run(*grid)[0] == 0
    name = "mlp-hidden_sizes=16-optimizer=adam-grid-lr"
    pruned = load(url, name).get_trials(states=(TrialState.PRUNED,))
    assert len(pruned) >= 2
    code, _, err = run("audit", name, "--pruned", "2", "--storage", url, "--quiet")
    assert code == 0, err
    trials = load(url, f"{name}-audit").trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    originals = {t.number: t for t in pruned}
    for trial in trials:
        original = originals[trial.user_attrs[AUDIT_OF]]
        assert trial.params == original.params
        assert trial_config(trial) == trial_config(original)
        assert len(trial.intermediate_values) == 5


def test_repeats_diverged_trials_and_twins_are_not_audited():
    study = optuna.create_study(direction="maximize")
    distribution = {"lr": optuna.distributions.CategoricalDistribution([0.1, 0.01, 0.001])}

    def pruned(lr, values, **user_attrs):
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, params={"lr": lr}, distributions=distribution,
            intermediate_values=dict(enumerate(values, start=1)), user_attrs=user_attrs))

    pruned(0.1, [0.3, 0.4])
    pruned(0.1, [], repeat_of=0)
    pruned(0.01, [0.2], diverged="validation loss became nan in epoch 2")
    pruned(0.1, [0.5])           # trained twice (two workers at once): audited once
    pruned(0.001, [0.1])
    candidates, excluded = audit_candidates(study)
    assert [t.number for t in candidates] == [0, 4]
    assert excluded == [
        "trial 1: repeat of a trained configuration (nothing trained; the trial repeated is "
        "a candidate itself)",
        "trial 2 diverged (the loss became NaN: stopped by its training, not by the pruner)",
        "trial 3 (as 0): the same parameters as another pruned trial"]


@pytest.mark.parametrize("argv, words", [
    (["audit", "nosuch", "--storage", "{db}"], "no study 'nosuch'"),
    (["audit", "mlp", "--pruned", "0", "--storage", "{db}"], "must be at least 1"),
    (["audit", "mlp", "--pruned", "-2", "--storage", "{db}"], "must be at least 1"),
    (["audit", "mlp", "--storage", "sqlite:///{tmp}/missing.db"], "no storage at"),
    (["audit", "mlp-audit", "--storage", "{db}"], "is the audit of 'mlp'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, audited_once, tmp_path):
    db = audited_once
    before = snapshot(load(db)), snapshot(load(db, "mlp-audit"))
    code, out, err = run(*(a.format(db=db, tmp=tmp_path) for a in argv))
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not (tmp_path / "missing.db").exists()
    assert (snapshot(load(db)), snapshot(load(db, "mlp-audit"))) == before


def test_a_study_without_a_pruned_trial_to_audit_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    search = [*SEARCH, "--trials", "2", "--storage", url]
    assert run(*search, "--pruner", "none")[0] == 0
    code, _, err = run("audit", "mlp", "--storage", url)
    assert code == 2 and err.strip() == ("optuna-search: error: study 'mlp' has no pruned "
                                         "trial to audit: 0 pruned")
    # A diverged trial is pruned, and not audited, for a reason the line gives.
    diverging = ["mlp", "--data", "synthetic", "--train-subset", "100", "--val-size", "50",
                 "--test-subset", "100", "--epochs", "2", "--trials", "1", "--set", "lr=1e6",
                 "--set", "optimizer=sgd", "--set", "activation=relu", "--set",
                 "batch_size=64", "--storage", url, "--study", "nan"]
    assert run(*diverging)[0] == 0
    code, _, err = run("audit", "nan", "--storage", url)
    assert code == 2 and "1 pruned (trial 0 diverged (the loss became NaN" in err
    assert len(err.strip().splitlines()) == 1
    assert optuna.get_all_study_names(url) == ["mlp", "nan"]
