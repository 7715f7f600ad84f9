"""The study note in optuna-dashboard: what it says, that a person's own notes stay, that
several processes writing it never mix their writes, and that a failing write never fails a
search (reports/study_note.py)."""
from __future__ import annotations

import multiprocessing
import re

import optuna
import pytest
from optuna_dashboard import get_note, save_note

from helpers import TINY
from pg_server import pg_study_name, pg_url  # noqa: F401 (fixtures)
from reports.study_note import MARK, LiveNote, note_body, note_summary, save_study_note
from search.cli import main
from storage import open_store
from storage.internals import study_system_attrs
from test_reports import report_study

NOTE_VERSION = "dashboard:note_ver"   # where optuna-dashboard keeps the study note's version
WRITES = 40                           # of the note, by each of 3 processes at once


def test_the_note_summarises_model_data_budget_trials_best_and_top_8(tmp_path):
    study = report_study(f"sqlite:///{tmp_path / 'r.db'}")
    note = note_summary(study)
    lines = note.splitlines()
    assert lines[0] == "## MLP on CIFAR-10 (cifar10-jpeg.tar.gz)"
    assert "- **Model:** MLP, 1,000 parameters." in lines
    assert "- **Trials:** 19 complete, 11 pruned: 30 trials." in lines
    assert any(line.startswith("- **Search:** 30 trials of 8 epochs") for line in lines)
    assert any(line.startswith("- **Data:** CIFAR-10 (cifar10-jpeg.tar.gz), 2,000 train")
               for line in lines)
    best = study.best_trial
    said = next(line for line in lines if line.startswith("- **Best:**"))
    assert said.startswith(f"- **Best:** trial {best.number}, val acc {best.value:.4f}")
    assert all(f"{k}=" in said for k in best.params)
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 8 and "max val acc" in table[0]      # head, rule, 8 rows
    assert re.fullmatch(r"\|(:?---:?\|)+", table[1])               # a Markdown table
    assert "In every row: schedule constant, epochs run 8." in lines
    assert "/work/" not in note                                    # no machine path


def test_a_persons_own_notes_below_the_line_are_kept_and_an_old_note_too():
    first = note_body("summary 1", "")
    assert first == f"summary 1\n\n---\n{MARK}\n"
    edited = first + "\nmy idea: try lr 0.01\n"                       # typed in the dashboard
    second = note_body("summary 2", edited)
    assert second.startswith("summary 2\n") and second.endswith("\nmy idea: try lr 0.01\n")
    assert "summary 1" not in second
    assert note_body("summary 3", "a note without the line").endswith(
        f"{MARK}\n\na note without the line\n")                      # never lost


def test_the_note_is_written_only_when_it_changes_as_the_dashboard_versions_it(tmp_path):
    study = report_study(f"sqlite:///{tmp_path / 'r.db'}")
    save_note(study, "my own note")
    assert save_study_note(study) is True
    assert study_system_attrs(study)[NOTE_VERSION] == 2             # the dashboard's next one
    assert save_study_note(study) is False                          # nothing changed
    assert study_system_attrs(study)[NOTE_VERSION] == 2
    note = get_note(study)
    assert note.startswith("## MLP") and note.endswith("\nmy own note\n")


def write_notes(url: str, name: str, writer: int, times: int, start) -> None:
    """One process writing the note `times` times, each body long (several of the
    dashboard's 2,045-character chunks) and of its own length and letter; all start at once."""
    import reports.study_note as study_note
    store = open_store(url, heartbeat=False)
    study = optuna.load_study(study_name=name, storage=store.optuna)
    start.wait(timeout=200)
    for time in range(times):
        letter = "ABCD"[writer]
        study_note.note_summary = lambda _: letter * (3000 + 1500 * writer + time % 2)
        study_note.save_study_note(study, lambda: store.lock(name))


def test_several_processes_writing_the_note_never_mix_their_writes(tmp_path):
    """Without the study's lock around a write, two processes read the same version and
    both write the next (the dashboard then takes a person's edit for stale), and their
    chunks interleave (one body's first chunk, another's second)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    optuna.create_study(study_name="mixed", storage=url)
    assert_writers_never_mix(url, "mixed")


@pytest.mark.postgres
def test_several_machines_writing_the_note_on_postgresql_never_mix_their_writes(pg_url,
                                                                                pg_study_name):
    optuna.create_study(study_name=pg_study_name,
                        storage=open_store(pg_url, heartbeat=False).optuna)
    assert_writers_never_mix(pg_url, pg_study_name)


def assert_writers_never_mix(url: str, name: str) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    writers = [context.Process(target=write_notes, args=(url, name, n, WRITES, start))
               for n in range(3)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=240)
        assert process.exitcode == 0
    study = optuna.load_study(study_name=name, storage=open_store(url, heartbeat=False).optuna)
    summary = get_note(study).partition("\n\n---\n")[0]
    assert len(set(summary)) == 1 and len(summary) in {3000 + 1500 * n + t
                                                       for n in range(3) for t in (0, 1)}
    assert study_system_attrs(study)[NOTE_VERSION] == 3 * WRITES    # each write its version


def test_a_note_that_cannot_be_written_is_said_once_and_the_search_goes_on(tmp_path):
    """A read-only database refuses the write: one line, then quiet."""
    report_study(f"sqlite:///{tmp_path / 'r.db'}")
    read_only = f"sqlite:///file:{tmp_path / 'r.db'}?mode=ro&uri=true"   # SQLite's own
    study = optuna.load_study(study_name="mlp", storage=read_only)
    live = LiveNote(study)
    said = live.after_trial()
    assert said.startswith("study note for optuna-dashboard not saved (") and \
        said.endswith("); the search goes on"), said
    assert "\n" not in said and live.after_trial() is None          # said once


def test_a_search_writes_its_note_after_each_trial(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    seen = []
    real_save = save_study_note

    def save_and_look(study, lock=None):
        written = real_save(study, lock)
        seen.append(get_note(study))
        return written

    monkeypatch.setattr("reports.study_note.save_study_note", save_and_look)
    assert main(["mlp", "--trials", "2", "--epochs", "1", "--study", "noted",
                 "--storage", url, *TINY]) == 0
    assert len(seen) == 2
    assert "- **Trials:** 1 complete: 1 trial." in seen[0]
    assert "- **Trials:** 2 complete: 2 trials." in seen[1]
    assert "### Top 2 by max validation accuracy" in seen[1]
    assert "- **Data:** synthetic images, 100 train / 50 validation / 100 test images." \
        in seen[1]
    study = optuna.load_study(study_name="noted", storage=url)
    assert get_note(study) == seen[1]


def test_a_search_whose_note_fails_finishes_its_trials(tmp_path, monkeypatch, capsys):
    def fail(study, body):
        raise OSError("disk full")

    monkeypatch.setattr("optuna_dashboard.save_note", fail)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["mlp", "--trials", "2", "--epochs", "1", "--study", "noted",
                 "--storage", url, *TINY]) == 0
    out = capsys.readouterr().out
    assert out.count("study note for optuna-dashboard not saved (OSError: disk full)") == 1
    study = optuna.load_study(study_name="noted", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
