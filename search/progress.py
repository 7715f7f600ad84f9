"""What a search prints while it runs, and its summary at the end.

On a terminal: a bar over the study (finished trials of its target, with an ETA from the epochs
finished in this run, not from whole trials) and a bar over the running trial (its steps, the
epoch, the latest val acc, its ETA); each finished trial is one line above them. Both ETAs
start from the first steps of the first epoch; after the last epoch the trial's bar says what
it does (testing, saving pictures). Every line fits the terminal's width (search/terminal.py:
wrapped at spaces by us, never mid-word by the terminal; a terminal reporting 0 columns counts
as 80). Anywhere else (a log file, a pipe, a worker's lines to its parent): plain lines without
carriage returns, whole, one per epoch and one per trial. `--quiet`: one line per trial only.
Accuracies show 4 decimals everywhere; a value that is missing shows as "-".

The study bar counts trained trials (complete and pruned) against the study's target, as the
target does; the summary counts every trial by how it ended (reports/counts.py), repeats apart,
adding up to the number optuna-dashboard lists.
"""
from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from reports.counts import count_trials
from reports.trial_data import trial_value
from search.interrupts import hide_interrupt_traceback
from search.pruning import PRUNE_REASON
from search.terminal import DEFAULT_COLUMNS, DEFAULT_ROWS, columns, duration, fit, rows, say
from storage import DEFAULT_STORAGE, redact
from storage.retries import RETRY_DUE

ACCURACY = "{:.4f}"
STUDY_REFRESH_SECONDS = 1.0   # how often the study's ETA follows the steps of an epoch
TRIAL_BAR = "{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]"
FINISHING_BAR = "{desc} |{bar}| [{elapsed}]"   # after the last epoch: no "<00:00" left
Best = tuple[int, float]   # a study's best trial: its number and its value


class Progress:
    def __init__(self, out=None, quiet: bool = False, tty: bool | None = None):
        self.out = sys.stdout if out is None else out
        self.quiet = quiet
        isatty = getattr(self.out, "isatty", lambda: False)
        self.bars = (isatty() if tty is None else tty) and not quiet
        self.study_bar: tqdm | None = None
        self.trial_bar: tqdm | None = None
        self.target = self.epochs = self.finished = 0
        self.best: Best | None = None    # (trial number, value) of the best complete trial
        self.trial_number: int | None = None
        self.epoch = 0                   # epochs finished by the running trial
        self.trial_epochs = 0            # its epochs (a grid over epochs varies them)
        self._val_acc: float | None = None   # its last validation accuracy
        self.epoch_seconds: list[float] = []   # every epoch finished in this run: the ETAs
        self._epoch_started = time.monotonic()
        self._epoch_done_part = 0.0      # the running epoch's share of steps done, 0-1
        self._study_refreshed = 0.0      # time.monotonic() of the study bar's last text
        self._eta_shown = False          # whether that text had an ETA

    # ------------------------------------------------------------------ the study
    def study(self, finished: int, target: int, epochs: int, best: Best | None) -> None:
        """The study as it stands when this process starts running trials: `finished` trained
        trials of its `target`, and its best trial (number, value)."""
        self.finished, self.target, self.epochs, self.best = finished, target, epochs, best
        if self.bars and self.study_bar is None:
            self.study_bar = self._bar(total=target, initial=min(finished, target),
                                       unit="trial", position=0,
                                       desc=self._study_count(),
                                       bar_format="{desc} |{bar}|")
            self._study_text()

    def _bar(self, **options) -> tqdm:
        """A tqdm bar as wide as the terminal, asked again at each refresh (a window may be
        resized); tqdm's own look-up takes a terminal of 0 columns and rows at its word and
        draws nothing, so ours answers instead (80 columns, 24 rows then)."""
        def shape(out) -> tuple[int, int]:   # (columns, rows); tqdm hides bars below rows
            return columns(out) or DEFAULT_COLUMNS, rows(out) or DEFAULT_ROWS

        bar = tqdm(file=self.out, ncols=shape(self.out)[0], nrows=shape(self.out)[1],
                   **options)
        bar.dynamic_ncols = shape
        return bar

    def width(self) -> int | None:
        """The terminal's width in characters; None when the output is no terminal."""
        return columns(self.out)

    def _study_text(self) -> None:
        if self.study_bar is None:
            return
        parts = [self._study_count()]
        eta = self.study_eta()
        self._eta_shown = eta is not None
        if eta is not None and self.finished < self.target:
            parts.append(f"ETA {duration(eta)}")
        if self.best is not None:
            number, value = self.best
            parts.append(f"best val_acc {ACCURACY.format(value)} (trial {number})")
        self.study_bar.set_description_str(", ".join(parts), refresh=True)
        self._study_refreshed = time.monotonic()

    def _study_count(self) -> str:
        return f"study: {min(self.finished, self.target)}/{self.target} trained"

    def study_eta(self) -> float | None:
        """Seconds left: the epochs the target still needs at this run's seconds per epoch
        (pruned trials end early, so it errs on the long side)."""
        per_epoch = self.seconds_per_epoch()
        if per_epoch is None:
            return None
        left = (max(0, self.target - self.finished) * self.epochs - self.epoch
                - self._epoch_done_part)
        return max(0.0, left) * per_epoch

    def seconds_per_epoch(self) -> float | None:
        """The mean over the epochs finished in this run; before the first one ends, its
        steps so far scaled to a whole epoch (its validation left out: an estimate)."""
        if self.epoch_seconds:
            return sum(self.epoch_seconds) / len(self.epoch_seconds)
        if self._epoch_done_part > 0:
            return (time.monotonic() - self._epoch_started) / self._epoch_done_part
        return None

    # ------------------------------------------------------------------ one trial
    def trial_started(self, number: int, epochs: int) -> None:
        self.trial_number, self.trial_epochs, self.epoch = number, epochs, 0
        self._epoch_started, self._epoch_done_part = time.monotonic(), 0.0
        if self.bars:
            self.trial_bar = self._bar(total=epochs, unit="epoch", position=1, leave=False,
                                       desc=self._trial_text(1), bar_format=TRIAL_BAR)

    def step(self, epoch: int, step: int, steps: int) -> None:
        """After each training step (host integers only: no GPU sync)."""
        bar = self.trial_bar
        if bar is None:
            return
        self._epoch_done_part = step / steps
        if bar.unit != "step":  # from epochs to steps, once their number is known
            bar.unit, bar.total = "step", bar.total * steps
            bar.n = bar.last_print_n = (epoch - 1) * steps
            bar.set_description_str(self._trial_text(epoch), refresh=False)
        bar.update((epoch - 1) * steps + step - bar.n)
        if (not self._eta_shown
                or time.monotonic() - self._study_refreshed >= STUDY_REFRESH_SECONDS):
            self._study_text()   # its ETA, from the first step on

    def epoch_done(self, epoch: int, epochs: int, val_acc: float) -> None:
        seconds = time.monotonic() - self._epoch_started
        self._epoch_started, self._epoch_done_part = time.monotonic(), 0.0
        self.epoch_seconds.append(seconds)
        self.epoch, self._val_acc = epoch, val_acc
        if self.trial_bar is not None:
            if self.trial_bar.unit != "step":
                self.trial_bar.update(epoch - self.trial_bar.n)
            self.trial_bar.set_description_str(self._trial_text(min(epoch + 1, epochs)))
            self._study_text()
        elif not self.quiet:
            eta = (epochs - epoch) * seconds
            self.line(f"trial {self.trial_number:>3} epoch {epoch}/{epochs} val_acc="
                      f"{ACCURACY.format(val_acc)} {seconds:.1f}s/epoch"
                      + (f", trial ETA {duration(eta)}" if epoch < epochs else "")
                      + (f", study ETA {duration(self.study_eta())}"
                         if self.study_eta() else ""))

    def _trial_text(self, epoch: int) -> str:
        text = f"trial {self.trial_number}: epoch {epoch}/{self.trial_epochs}"
        if self._val_acc is not None and self.epoch:
            text += f", val_acc {ACCURACY.format(self._val_acc)}"
        return text

    def finishing(self, what: str) -> None:
        """After the last epoch (or the pruner's stop): what the trial does now, on its bar
        instead of 100% and "ETA 0s" (testing, saving the pictures: seconds to a minute)."""
        bar = self.trial_bar
        if bar is None:
            return
        bar.bar_format = FINISHING_BAR
        bar.set_description_str(f"trial {self.trial_number}: {what}", refresh=True)

    def trial_finished(self, trial: optuna.trial.FrozenTrial, finished: int,
                       best: Best | None) -> None:
        if self.trial_bar is not None:
            self.trial_bar.close()
            self.trial_bar = None
        self._val_acc, self.epoch = None, 0
        self.finished, self.best = finished, best
        self.line(trial_line(trial))
        if self.study_bar is not None:
            self.study_bar.n = min(finished, self.target)
            self._study_text()

    # ------------------------------------------------------------------ plain lines
    def line(self, text: str) -> None:
        """A line above the bars (or just a line), wrapped to fit the terminal."""
        if self.bars:
            tqdm.write(fit(text, self.width()), file=self.out)
        else:
            say(self.out, text)

    def close(self) -> None:
        for bar in (self.trial_bar, self.study_bar):
            if bar is not None:
                bar.close()
        self.trial_bar = self.study_bar = None


class LineSender:
    """A text stream that hands each finished line to `put` as ("line", index, line): how a
    worker process or Ray actor (search/launch.py, search/ray_cluster.py) prints through the
    launcher, which prefixes it with the worker's number."""

    def __init__(self, put, index: int):
        self.put, self.index, self.buffer = put, index, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.put(("line", self.index, line))
        return len(text)

    def flush(self) -> None:
        pass


def quiet_optuna() -> None:
    """Our own line per trial instead of Optuna's log; no notes on experimental features."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").addFilter(hide_interrupt_traceback)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def trial_line(trial: optuna.trial.FrozenTrial) -> str:
    """One line per finished trial: number, state, val acc, epochs, seconds, parameters, and
    why it ended early (pruned: at which epoch, its value against the pruner's threshold;
    interrupted: queued again). A value it has not got reads "-"."""
    attrs = trial.user_attrs
    epochs_run = trial_value(trial, "epochs_run", len(trial.intermediate_values) or None)
    value = trial.value
    if value is None and trial.intermediate_values:   # stopped mid-way: its best so far
        value = max(trial.intermediate_values.values())
    seconds = trial.duration.total_seconds() if trial.duration else None
    repeat = attrs.get("repeat_of")
    reason = (f"repeat of trial {repeat}: not trained" if repeat is not None else
              attrs.get(PRUNE_REASON) or attrs.get("diverged")
              or trial_value(trial, "fail_reason") or _interrupted(trial) or "")
    return (f"trial {trial.number:>3} {trial.state.name:<8} val_acc={_shown(value)} "
            f"epochs={_shown(epochs_run, '{}')} "
            f"{_shown(seconds, '{:.1f}s'):>7}  {key_values(trial.params)}"
            f"{'  (' + reason[:160] + ')' if reason else ''}")


def _interrupted(trial: optuna.trial.FrozenTrial) -> str | None:
    """Why a trial failed without an error of its own: Ctrl-C or a signal stopped it, and
    it was queued again (storage/retries.py marks it so)."""
    if trial.state == TrialState.FAIL and trial.system_attrs.get(RETRY_DUE):
        return "interrupted: queued again; the same command resumes it"
    return None


def _shown(value: Any, form: str = ACCURACY) -> str:
    return "-" if value is None else form.format(value)


def key_values(params: dict[str, Any]) -> str:
    """batch_size=128 lr=0.01 hidden_sizes=512,256: as --set takes them, no space inside one
    (a line is wrapped between parameters, never inside one)."""
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_short(v) for v in value)
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace(" ", "_")


def print_summary(study: optuna.Study, settings, out) -> int:
    """Trials by how they ended (repeats apart: reports/counts.py), the best trial, and the
    command that prints its table; returns 0."""
    trials = study.get_trials(deepcopy=False)
    say(out, f"trials: {count_trials(trials).summary()}")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        say(out, "no trial completed yet")
        return 0
    best = study.best_trial
    test = best.user_attrs.get("test_acc")
    say(out, f"best: trial {best.number} val_acc={ACCURACY.format(best.value)}"
             f" test_acc={_shown(test)} {key_values(best.params)}")
    storage = ("" if settings.storage == DEFAULT_STORAGE
               else f" --storage {redact(settings.storage)}")
    say(out, f"table: optuna-search report {settings.study_name} --top 8{storage}")
    try:  # the figures are a convenience: a failure here must not fail a finished search
        from reports.dashboard_figures import register_dashboard_figures
        register_dashboard_figures(study)
    except Exception as error:
        say(out, f"figures for optuna-dashboard not saved ({type(error).__name__}: {error})")
    return 0
