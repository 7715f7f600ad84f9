"""`optuna-search audit STUDY --pruned K`: train to the full budget K pruned trials of a study,
to see whether pruning stopped one that would have won (optuna#1529: "what proves that a
trial that started badly won't be a good one").

- Which: the K pruned trials that looked best when they were stopped (their best validation
  accuracy by the pruning epoch), or K at random (`--random`, seeded). Not audited: a repeat
  (it trained nothing: the trial it repeats is a candidate itself), a trial whose loss diverged
  (NaN: its training stopped it, not the pruner), a second trial of the same parameters.
- Where: a sibling study, STUDY-audit, in the same storage, so that STUDY's sampler, target,
  counts and tables never see it. Its spec is STUDY's (same model, space, --set values, grid,
  epochs, data and seed: search/settings.py), without pruning and marked `audit_of`, so
  search/claim.py runs only the trials queued in it, like a grid's points. Each queued trial
  carries the pruned trial's parameters, so the objective builds exactly its configuration,
  and its number (reports/audit.AUDIT_OF), which a retry keeps.
- How: queued under the audit study's lock, once per pruned trial (a FAIL with tries left is
  queued again, as a grid point is), then run by the one run loop (search/launch.py): resumable,
  safe under kills, `--workers N`, any storage; two audits at once queue and train each trial
  once. The report reads the result (reports/audit.py).
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from reports.audit import AUDIT_OF, at_pruning, audit_study_name, read_audit
from reports.table import REPEAT_ATTR, load_study
from search.errors import StudyMismatch, UsageError
from search.settings import RunSettings, StudySpec
from search.study import TARGET_ATTR, OpenStudy, recorded_spec
from search.terminal import say
from storage import DEFAULT_STORAGE, MAX_TRIES, Store, redact

@dataclass
class Plan:
    """What an audit will train: read from the study before anything is loaded or written."""
    study: optuna.Study
    spec: StudySpec               # the audit study's: the study's own, without pruning
    chosen: list[FrozenTrial]     # the pruned trials to train to the full budget
    candidates: int               # pruned trials that could be audited
    excluded: list[str]           # why the other pruned trials are not, one line each
    randomly: bool = False        # chosen at random (--random), not the best-looking

    @property
    def name(self) -> str:
        return audit_study_name(self.study.study_name)


def plan_audit(store: Store, study_name: str, pruned: int, seed: int | None = None) -> Plan:
    """Choose `pruned` trials of the study (at random with `seed`, else the best-looking).

    Raises ReportError for an unknown study, StudyMismatch for a study that optuna-search did
    not make (or an audit), UsageError for a study without a pruned trial to audit."""
    if pruned < 1:
        raise UsageError(f"--pruned must be at least 1, not {pruned}")
    study = load_study(store.url, study_name, store=store)
    spec = recorded_spec(study)
    if spec is None:
        raise StudyMismatch(f"study {study_name!r} records no optuna-search settings: only a "
                            "study made by optuna-search can be audited")
    if spec.audit_of is not None:
        raise StudyMismatch(f"study {study_name!r} is the audit of {spec.audit_of!r}; audit "
                            f"that study instead")
    candidates, excluded = audit_candidates(study)
    if not candidates:
        pruned_count = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        why = f" ({'; '.join(excluded)})" if excluded else ""
        raise UsageError(f"study {study_name!r} has no pruned trial to audit: {pruned_count} "
                         f"pruned{why}")
    if seed is None:
        chosen = sorted(candidates, key=_looked_best)[:pruned]
    else:   # a sample of the candidates in trial order: the same seed picks the same ones
        chosen = sorted(random.Random(seed).sample(candidates, min(pruned, len(candidates))),
                        key=lambda t: t.number)
    spec = dataclasses.replace(spec, pruner="none", sampler="random", audit_of=study_name)
    return Plan(study, spec, chosen, len(candidates), excluded, randomly=seed is not None)


def audit_candidates(study: optuna.Study) -> tuple[list[FrozenTrial], list[str]]:
    """The study's pruned trials that an audit may train (in trial order), and one line per
    kind of pruned trial it leaves out, saying why."""
    candidates, repeats, diverged, empty, twins, seen = [], [], [], [], [], {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        key = repr(sorted(trial.params.items()))
        if REPEAT_ATTR in trial.user_attrs:
            repeats.append(trial.number)
        elif "diverged" in trial.user_attrs:
            diverged.append(trial.number)
        elif at_pruning(trial)[1] is None:
            empty.append(trial.number)
        elif key in seen:
            twins.append(f"{trial.number} (as {seen[key]})")
        else:
            seen[key] = trial.number
            candidates.append(trial)
    excluded = [f"{_trials(repeats)}: repeat{_s(repeats)} of a trained configuration "
                "(nothing trained; the trial repeated is a candidate itself)" if repeats else "",
                f"{_trials(diverged)} diverged (the loss became NaN: stopped by its training, "
                "not by the pruner)" if diverged else "",
                f"{_trials(empty)} reported no epoch" if empty else "",
                f"{_trials(twins)}: the same parameters as another pruned trial"
                if twins else ""]
    return candidates, [line for line in excluded if line]


def _looked_best(trial: FrozenTrial) -> tuple:
    """Sort key: the best validation accuracy by the pruning epoch first; then the later
    pruning epoch (more evidence); then the earlier trial."""
    epoch, value = at_pruning(trial)
    return (-value, -(epoch or 0), trial.number)


def plan_lines(plan: Plan) -> list[str]:
    """What the audit will train, in words, before anything is loaded."""
    how = "at random" if plan.randomly else "the best-looking when pruned"
    shown = ", ".join(f"{t.number} ({_then(t)})" for t in plan.chosen)
    lines = [f"auditing {len(plan.chosen)} of the {plan.candidates} pruned trials of study "
             f"{plan.study.study_name!r} ({how}): trials {shown}; each is trained to "
             f"{plan.spec.epochs} epochs in study {plan.name!r}"]
    return lines + [f"not audited: {line}" for line in plan.excluded]


def queue_audit(opened: OpenStudy, chosen: list[FrozenTrial]) -> int:
    """Queue each chosen trial that the audit study has no trial for yet (or whose tries all
    failed, with tries left), once, under the audit study's lock; its target counts every
    pruned trial ever queued in it. Returns how many were queued."""
    study, store = opened.study, opened.store
    with store.lock(study.study_name):
        store.fail_stale_trials(study)   # a FAIL whose retry is due is not queued anew
        settled, failures = set(), {}
        for trial in study.get_trials(deepcopy=False):
            number = trial.user_attrs.get(AUDIT_OF)
            if trial.state == TrialState.FAIL:
                failures[number] = failures.get(number, 0) + 1
            else:
                settled.add(number)
        queued = 0
        for trial in chosen:
            if trial.number not in settled and failures.get(trial.number, 0) < MAX_TRIES:
                study.enqueue_trial(trial.params, user_attrs={AUDIT_OF: trial.number})
                settled.add(trial.number)
                queued += 1
        target = len(settled | set(failures))
        if study.user_attrs.get(TARGET_ATTR) != target:
            study.set_user_attr(TARGET_ATTR, target)
    return queued


def nothing_to_train(store: Store, plan: Plan) -> bool:
    """Every chosen trial has its audit trial finished (or used its tries) and none runs:
    checked before the data loads, so a rerun says so at once."""
    name = plan.name
    if name not in optuna.get_all_study_names(storage=store.optuna):
        return False
    trials = optuna.load_study(study_name=name, storage=store.optuna).get_trials(deepcopy=False)
    if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
        return False
    done = {t.user_attrs.get(AUDIT_OF) for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    tries = [t.user_attrs.get(AUDIT_OF) for t in trials if t.state == TrialState.FAIL]
    return all(t.number in done or tries.count(t.number) >= MAX_TRIES for t in plan.chosen)


def run_audit(settings: RunSettings, plan: Plan, out) -> int:
    """Load the study's data, make or join the audit study, queue the chosen trials and run
    them (search/launch.py); then say what the audit found. Exit status as a search's."""
    from search.launch import run_search   # torch: after the command's first lines
    from search.progress import quiet_optuna
    from search.run import load_data, with_loaded_data
    from search.study import open_study
    quiet_optuna()
    data = load_data(settings, say=lambda line: say(out, line))
    settings = with_loaded_data(settings, data)   # the study's data, or one line and exit 2
    opened = open_study(settings, new_run=False)
    queue_audit(opened, plan.chosen)
    numbers = audit_trials(opened.study)   # its lines name its own trial numbers
    say(out, f"in study {plan.name!r}, " + ", ".join(
        f"trial {numbers[t.number]} trains trial {t.number}" for t in plan.chosen
        if t.number in numbers))
    code = run_search(settings, out, data)
    if code != 130:
        say_findings(opened.store, plan.study, out)
        say(out, f"report: optuna-search report {plan.study.study_name}"
                 f"{_storage_option(settings.storage)}")
    return code


def audit_trials(audit: optuna.Study) -> dict[int, int]:
    """Pruned trial's number -> the number of its latest trial in the audit study."""
    return {t.user_attrs[AUDIT_OF]: t.number for t in audit.get_trials(deepcopy=False)
            if AUDIT_OF in t.user_attrs}


def say_findings(store: Store, study: optuna.Study, out, top: int = 8) -> None:
    """The audit's line and one line per audited trial (the report has them as a table)."""
    audit = read_audit(store, study, top)
    if audit is None:
        return
    for row in audit.rows:
        if row.final is None:
            say(out, f"trial {row.trial}: {row.state} (audit trial {row.audit_trial})")
            continue
        verdict = ("beats the best" if audit.beats_best(row) else
                   f"in the top {audit.top}" if audit.in_top(row) else
                   f"outside the top {audit.top}")
        test = f", test acc {row.test_acc:.4f}" if row.test_acc is not None else ""
        say(out, f"trial {row.trial}: val acc {row.value_then:.4f} when pruned at epoch "
                 f"{row.pruned_at}, {row.final:.4f} after {audit.epochs} epochs{test}: would "
                 f"rank {row.rank} of {audit.complete + 1}, {verdict}")
    say(out, f"{audit.line()}; {audit.best_words()}")


def _storage_option(url: str) -> str:
    return "" if url == DEFAULT_STORAGE else f" --storage {redact(url)}"


def _then(trial: FrozenTrial) -> str:
    epoch, value = at_pruning(trial)
    return f"val acc {value:.4f} at epoch {epoch}"


def _trials(numbers: list) -> str:
    return f"trial{_s(numbers)} {', '.join(map(str, numbers))}"


def _s(numbers: list) -> str:
    return "s" if len(numbers) != 1 else ""
