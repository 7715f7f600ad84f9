"""search.run: the one run loop. The study holds the budget (--trials is its target, counted in
the storage), resumes draw new configurations, a trial that dies elsewhere comes back as a
retry here, a retry reports the epochs the storage lacks, and a process whose trials keep
failing stops with one line."""
from __future__ import annotations

import os
import signal

import optuna
from optuna.trial import TrialState

import search.train.trainer
from helpers import (FAST_HEARTBEAT, TINY, finished, integrity, load, run_cli,
                     running_with_an_epoch, table_rows, wait_until)
from reports.trial_data import trial_curves, trial_value
from search.cli import main


def configurations(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials]


def test_trials_is_the_studys_target_and_a_resumed_run_draws_new_configurations(tmp_path):
    db = tmp_path / "t.db"
    command = ["mlp", "--trials", "6", "--epochs", "30", "--storage", f"sqlite:///{db}", *TINY]
    first = run_cli(command)
    wait_until(lambda: finished(db) >= 2, what="two finished trials")
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130
    assert "Traceback" not in first.stderr.read()
    before = load(db).get_trials()
    assert TrialState.RUNNING not in {t.state for t in before}

    second = run_cli(command)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    trials = load(db).get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 6                                   # exactly the target, no more
    assert all(t.state != TrialState.RUNNING for t in trials)
    # The second run sampled with its own seed: none of its new configurations replays one
    # of the first run's (a retry of the interrupted trial repeats its own, on purpose).
    runs = {t.number: trial_value(t, "run")["run"] for t in trials}
    first_run = configurations(t for t in trials if runs[t.number] == 1)
    new_in_second = [t for t in trials if runs[t.number] == 2
                     and "failed_trial" not in t.system_attrs]
    assert new_in_second and not set(configurations(new_in_second)) & set(first_run)
    seeds = {trial_value(t, "run")["sampler_seed"] for t in trials}
    assert len(seeds) == 2
    # The same command once more: the target is met, nothing runs.
    again = run_cli(command)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "target is met" in out
    assert len(load(db).get_trials()) == len(trials)
    assert integrity(db) == "ok"


def test_a_larger_target_extends_the_study(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/t.db"
    assert main(["mlp", "--trials", "2", "--epochs", "1", "--storage", url, *TINY]) == 0
    assert main(["mlp", "--trials", "3", "--epochs", "1", "--storage", url, *TINY]) == 0
    assert main(["mlp", "--epochs", "1", "--storage", url, *TINY]) == 0  # keeps its 3
    assert [t.state for t in load(tmp_path / "t.db").get_trials()] == [TrialState.COMPLETE] * 3


def test_ctrl_c_right_after_a_trial_is_claimed_fails_it_queues_it_and_exits_130(
        tmp_path, monkeypatch, capsys):
    ask = optuna.Study.ask

    def ask_then_interrupt(study, *args, **kwargs):   # Ctrl-C as the claim returns
        trial = ask(study, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_interrupt)
    url = f"sqlite:///{tmp_path}/t.db"
    assert main(["mlp", "--trials", "3", "--epochs", "1", "--storage", url, *TINY]) == 130
    assert "Resume with the same command" in capsys.readouterr().err
    trials = load(tmp_path / "t.db").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert not trial_curves(trials[0])  # it never trained
    monkeypatch.setattr(optuna.Study, "ask", ask)
    assert main(["mlp", "--trials", "3", "--epochs", "1", "--storage", url, *TINY]) == 0
    states = [t.state for t in load(tmp_path / "t.db").get_trials()]
    assert states.count(TrialState.COMPLETE) == 3 and TrialState.WAITING not in states


def test_a_trial_whose_process_died_elsewhere_comes_back_here_as_a_retry(tmp_path, monkeypatch):
    db = tmp_path / "t.db"
    command = ["mlp", "--trials", "2", "--epochs", "40", "--storage", f"sqlite:///{db}", *TINY,
               "--set", "batch_size=16"]
    victim = run_cli(command, **FAST_HEARTBEAT)
    wait_until(lambda: running_with_an_epoch(db) >= 1, what="a trial that has reported")
    victim.kill()
    assert victim.wait(timeout=60) == -signal.SIGKILL
    dead = load(db).get_trials()[0]
    assert dead.state == TrialState.RUNNING

    for name, value in FAST_HEARTBEAT.items():
        monkeypatch.setenv(name, value)
    assert main(command) == 0
    trials = load(db).get_trials()
    assert trials[0].state == TrialState.FAIL                 # failed once overdue
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params
    values = retries[0].intermediate_values
    assert sorted(values) == list(range(1, 41))              # every epoch once, no gap
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert integrity(db) == "ok"


def test_a_process_whose_trials_keep_failing_stops_with_one_line(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(search.objective, "train", broken)
    url = f"sqlite:///{tmp_path}/t.db"
    assert main(["mlp", "--trials", "10", "--epochs", "1", "--storage", url, *TINY]) == 1
    err = capsys.readouterr().err
    assert [t.state for t in load(tmp_path / "t.db").get_trials()] == [TrialState.FAIL] * 3
    lines = [line for line in err.splitlines() if line.startswith("optuna-search:")]
    assert len(lines) == 1 and "3 trials in a row failed" in lines[0] and "boom" in lines[0]


def test_workers_share_the_target_and_run_exactly_that_many(tmp_path, capfd):
    db = tmp_path / "w.db"
    assert main(["mlp", "--workers", "3", "--trials", "7", "--epochs", "1",
                 "--storage", f"sqlite:///{db}", *TINY]) == 0
    trials = load(db).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 7
    assert integrity(db) == "ok"


def test_the_target_counts_finished_trials_in_the_storage_whoever_ran_them(tmp_path):
    """Trials added by anything (another machine, by hand) count towards the target."""
    url = f"sqlite:///{tmp_path}/t.db"
    assert main(["mlp", "--trials", "1", "--epochs", "1", "--storage", url, *TINY]) == 0
    study = load(tmp_path / "t.db")
    trial = study.get_trials()[0]
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(
            value=0.1, params=trial.params, distributions=trial.distributions))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))  # does not count
    assert main(["mlp", "--trials", "4", "--epochs", "1", "--storage", url, *TINY]) == 0
    states = [t.state for t in load(tmp_path / "t.db").get_trials()]
    assert states.count(TrialState.COMPLETE) == 4 and len(states) == 5


def test_a_storage_that_fails_outside_a_trial_is_one_line_and_exit_1(tmp_path, monkeypatch,
                                                                      capsys):
    """The summary after the trials reads the storage too: it gone is one line, not a traceback."""
    import search.launch
    from storage import StorageUnavailable

    def storage_gone(*args, **kwargs):
        raise StorageUnavailable("storage sqlite:///x.db did not answer for 3 s")
    monkeypatch.setattr(search.launch, "print_summary", storage_gone)
    db = tmp_path / "gone.db"
    code = main(["mlp", "--trials", "1", "--storage", f"sqlite:///{db}", *TINY])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.strip().splitlines() == [
        "optuna-search: error: storage sqlite:///x.db did not answer for 3 s"], err
    assert finished(db) == 1  # the trial itself landed


def test_repeats_train_nothing_and_the_target_counts_trained_configurations(tmp_path, capsys):
    """A space of 3 configurations (every MLP list fixed but the activation) and a target of
    5: the (seeded) random sampler proposes trained configurations again; those answer without
    training, do not count towards the target, show once in the table, and the study ends
    when all 3 are trained, saying so."""
    url = f"sqlite:///{tmp_path}/t.db"
    fixed = ["--set", "batch_size=64", "--set", "optimizer=sgd", "--set", "weight_decay=0.001",
             "--set", "lr=0.01"]
    assert main(["mlp", "--trials", "5", "--epochs", "1", "--storage", url, *TINY,
                 *fixed]) == 0
    out = capsys.readouterr().out
    trials = load(tmp_path / "t.db").get_trials()
    trained = [t for t in trials if "repeat_of" not in t.user_attrs]
    repeats = [t for t in trials if "repeat_of" in t.user_attrs]
    assert sorted(t.params["activation"] for t in trained) == ["relu", "sigmoid", "tanh"]
    assert len(repeats) == 5   # seeded: the same proposals every run
    for repeat in repeats:     # answered from the trained one, its value for the sampler
        original = trials[repeat.user_attrs["repeat_of"]]
        assert original.params == repeat.params and original.value == repeat.value
        assert not trial_curves(repeat)
    # counted apart from the complete (and pruned) ones, adding up to the study's trials
    assert f"trials: 3 complete, 5 repeats (not trained): {len(trials)} trials\n" in out
    assert main(["studies", "--storage", url]) == 0                 # counted alike there
    [row] = table_rows(capsys.readouterr().out)
    assert (row["complete"], row["pruned"], row["repeats"], row["trials"]) == \
        ("3", "0", "5", str(len(trials)))
    assert main(["report", "mlp", "--format", "text", "--storage", url]) == 0   # and here
    assert (f"Study 'mlp', mlp: 3 complete, 5 repeats (not trained): {len(trials)} trials."
            in capsys.readouterr().out)
    assert "the space has 3 configurations and every one is trained" in out
    assert main(["report", "mlp", "--storage", url]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3   # the header and each trained configuration once
