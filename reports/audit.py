"""What a pruning audit found, for the report: did pruning stop a trial that would have won?

`optuna-search audit STUDY` (search/audit.py) trains some of STUDY's pruned trials to the full
budget in a sibling study, STUDY-audit, each audit trial marked with the pruned trial's
number (AUDIT_OF). Read back here, each audited trial is set beside STUDY's own complete
trials: its value when it was pruned (its best validation accuracy by then), its final value
(its best validation accuracy over the full budget, the objective of every complete trial),
its test accuracy, where it would have ranked, whether that is inside the report's top N, and
whether it beat the study's best (a false prune). STUDY itself is never changed by an audit.
"""
from __future__ import annotations

import html
import math
import textwrap
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from reports.table import REPEAT_ATTR, study_setting
from storage import Store

AUDIT_SUFFIX = "-audit"
AUDIT_OF = "audit_of"   # user attribute of an audit trial: the number of the trial it trains
# Which of a pruned trial's audit trials speaks for it: a finished one before one in flight.
_PREFERENCE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
               TrialState.WAITING, TrialState.FAIL)
_STATE_WORDS = {TrialState.COMPLETE: "trained", TrialState.PRUNED: "diverged",
                TrialState.RUNNING: "running", TrialState.WAITING: "queued",
                TrialState.FAIL: "failed"}


def audit_study_name(study_name: str) -> str:
    return study_name + AUDIT_SUFFIX


def at_pruning(trial: FrozenTrial) -> tuple[int | None, float | None]:
    """(the epoch a pruned trial stopped at, its best validation accuracy by then): what the
    pruner judged it on, and what the audit ranks pruned trials by."""
    values = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
    return trial.last_step, (max(values) if values else None)


@dataclass(frozen=True)
class AuditRow:
    trial: int                  # the pruned trial of the study
    pruned_at: int | None       # the epoch it stopped at
    value_then: float | None    # its best validation accuracy by then
    state: str                  # trained, diverged, running, queued, failed
    final: float | None         # its best validation accuracy over the full budget
    test_acc: float | None
    rank: int | None            # where it would rank among the study's complete trials
    audit_trial: int            # its trial in the audit study
    # Its audit's first epochs equal the pruned run's (the same configuration, seed and
    # data: so on a deterministic device); None before they are trained.
    reproduced: bool | None = None


@dataclass(frozen=True)
class Audit:
    name: str                   # the audit study
    epochs: int | None          # the full budget
    top: int                    # the report's top N
    best: FrozenTrial | None    # the study's best complete trial
    complete: int               # the study's complete trials (repeats not counted)
    rows: list[AuditRow]

    @property
    def trained(self) -> list[AuditRow]:
        return [row for row in self.rows if row.final is not None]

    def in_top(self, row: AuditRow) -> bool:
        return row.rank is not None and row.rank <= self.top

    def beats_best(self, row: AuditRow) -> bool:
        """A false prune: trained to the end, it beats every trial the study completed."""
        return row.final is not None and (self.best is None or row.final > self.best.value)

    def line(self) -> str:
        """'pruning audit: 3 pruned trials trained to 30 epochs; 1 would have entered the top
        8, 0 beat the best' (and what is not trained yet)."""
        trained, epochs = self.trained, self.epochs or "?"
        text = (f"pruning audit: {len(trained)} pruned trial{_s(len(trained))} trained to "
                f"{epochs} epochs; {sum(map(self.in_top, trained))} would have entered the "
                f"top {self.top}, {sum(map(self.beats_best, trained))} beat the best")
        others = {}
        for row in self.rows:
            if row.final is None:
                others[row.state] = others.get(row.state, 0) + 1
        if others:
            text += " (" + ", ".join(f"{n} {state}" for state, n in others.items()) + ")"
        return text

    def best_words(self) -> str:
        if self.best is None:
            return "the study has no complete trial"
        return (f"the study's best is trial {self.best.number}, val acc "
                f"{self.best.value:.4f}, of {self.complete} complete trials")


def read_audit(store: Store, study: optuna.Study, top: int = 8) -> Audit | None:
    """The audit of `study` (from STUDY-audit in the same storage), or None when it has none."""
    name = audit_study_name(study.study_name)
    if name not in optuna.get_all_study_names(storage=store.optuna):
        return None
    audit = optuna.load_study(study_name=name, storage=store.optuna)
    spoken: dict[int, FrozenTrial] = {}
    for trial in audit.get_trials(deepcopy=False):
        number = trial.user_attrs.get(AUDIT_OF)
        if number is None:
            continue
        held = spoken.get(number)
        if held is None or _PREFERENCE.index(trial.state) < _PREFERENCE.index(held.state):
            spoken[number] = trial
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    complete = [(t.number, t.value) for t in trials.values()
                if t.state == TrialState.COMPLETE and REPEAT_ATTR not in t.user_attrs]
    best = max((t for t in trials.values() if t.state == TrialState.COMPLETE
                and REPEAT_ATTR not in t.user_attrs), key=lambda t: t.value, default=None)
    rows = []
    for number, trained in sorted(spoken.items()):
        pruned_at, value_then = at_pruning(trials[number]) if number in trials else (None, None)
        final = trained.value if trained.state == TrialState.COMPLETE else None
        # As the report's table ranks: a higher value first, the earlier trial on a tie.
        rank = None if final is None else 1 + sum(
            value > final or (value == final and other < number) for other, value in complete)
        rows.append(AuditRow(number, pruned_at, value_then, _STATE_WORDS[trained.state], final,
                             trained.user_attrs.get("test_acc") if final is not None else None,
                             rank, trained.number,
                             _reproduced(trials.get(number), trained) if final else None))
    return Audit(name, study_setting(audit, "epochs"), top, best, len(complete), rows)


# Short: the Markdown table fits 100 columns; the caption says what each one is.
COLUMNS = ("trial", "epoch", "val acc then", "final val acc", "test acc", "rank", "top {top}",
           "beat best", "audit trial")


def _reproduced(original: FrozenTrial | None, audit: FrozenTrial) -> bool | None:
    if original is None:
        return None
    again = audit.intermediate_values
    return all(epoch in again and (again[epoch] == value or abs(again[epoch] - value) < 1e-9)
               for epoch, value in original.intermediate_values.items())


def audit_cells(audit: Audit) -> tuple[list[str], list[list[str]]]:
    """The audit's table as text: headers and one row of cells per audited trial."""
    headers = [c.format(top=audit.top) for c in COLUMNS]
    rows = []
    for row in audit.rows:
        done = row.final is not None
        rows.append([str(row.trial), _show(row.pruned_at), _acc(row.value_then),
                     _acc(row.final) if done else row.state, _acc(row.test_acc),
                     f"{row.rank} of {audit.complete + 1}" if done else "-",
                     _yes(audit.in_top(row)) if done else "-",
                     _yes(audit.beats_best(row)) if done else "-", str(row.audit_trial)])
    return headers, rows


def caption(audit: Audit) -> str:
    return (f"Each pruned trial trained again to the full budget, with the same configuration "
            f"and seed (its audit trial in study {audit.name!r}). Epoch: where it was pruned; "
            "val acc then: its best validation accuracy by that epoch; final val acc: its "
            f"best over {audit.epochs or '?'} epochs; rank: its place had it completed, among "
            f"the study's {audit.complete} complete trials and itself; beat best: a false "
            f"prune. {audit.best_words()[0].upper()}{audit.best_words()[1:]}."
            + _reproduced_words(audit))


def _reproduced_words(audit: Audit) -> str:
    """Whether the audits repeat the pruned runs' epochs: evidence that each trained the same
    configuration (a GPU's non-deterministic kernels may differ in the last digits)."""
    checked = [row.reproduced for row in audit.rows if row.reproduced is not None]
    if not checked:
        return ""
    return (f" The audit's first epochs equal the pruned run's in {sum(checked)} of "
            f"{len(checked)}.")


def audit_markdown(audit: Audit) -> str:
    """The audit's section of the Markdown report: its line, its caption, its table."""
    headers, rows = audit_cells(audit)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join([f"## Pruning audit\n\n{audit.line()}.\n\n"
                      f"{textwrap.fill(caption(audit), 100)}\n", *lines])


def audit_html(audit: Audit) -> str:
    """The audit's section of the HTML page (its style is the report page's)."""
    headers, rows = audit_cells(audit)
    head = "".join(f"<th class='number'>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class='number'>{html.escape(c)}</td>" for c in cells)
                   + "</tr>" for cells in rows)
    return (f"<h2>Pruning audit</h2><p class='header'>{html.escape(audit.line())}.</p>"
            f"<p class='caption'>{html.escape(caption(audit))}</p><div class='table-box'>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _show(value) -> str:
    return "-" if value is None else str(value)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _s(n: int) -> str:
    return "" if n == 1 else "s"
