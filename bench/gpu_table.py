"""What bench/gpu_check.py runs (its plan, full or tiny) and the table it prints: one row per
figure of issue 14 with its target and a verdict. Pure functions over the measured numbers
(no torch), so the table is tested without running anything.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

SEARCH_TARGET_S = 8 * 60          # the report's ResNet18 search, 30 trials x 30 epochs
SEARCH_TARGET_TEST_ACC = 0.89
SHARED_TARGET_IMAGES_S = 55_000   # 4 captured trials on one GPU, together
ACCURACY_POINTS = 0.5             # captured against eager, 10 epochs, same seed

FULL = {
    "tiny": False,
    "images": 50_000, "eval_images": 10_000,   # all training images; the test images evaluate
    "epochs": 2,                # per speed measurement: warm-up + one steady epoch
    "accuracy_epochs": 10,      # the batch-128 ResNet18 runs, captured and eager
    "common_workers": 8,        # the common recipe's DataLoader workers (16 cores)
    "rows": [
        {"label": "ResNet18 batch 64", "model": "resnet18", "batch": 64, "set": {},
         "target_s": 2.4},
        {"label": "ResNet18 batch 128", "model": "resnet18", "batch": 128, "set": {},
         "target_s": 1.25, "target_ratio": 3.5, "accuracy": True},
        {"label": "ResNet18 batch 512", "model": "resnet18", "batch": 512, "set": {},
         "target_s": 0.8},
        {"label": "MLP-Mixer patch 4 batch 128", "model": "mlpmixer", "batch": 128,
         "set": {"patch_size": 4}, "target_ratio": 3.6},
    ],
    "shared_processes": 4, "shared_model": "resnet18", "shared_batch": 128,
    "shared_epochs": 4, "shared_eval_images": 1000,
    "search": ["resnet18", "--trials", "30", "--epochs", "30", "--workers", "4"],
    "search_trials": 30, "search_epochs": 30,
}

TINY = {
    **FULL, "tiny": True, "images": 32, "eval_images": 32, "accuracy_epochs": 2,
    "common_workers": 0,
    "rows": [
        {"label": "ResNet18 batch 8 (tiny)", "model": "resnet18", "batch": 8, "set": {},
         "target_s": 2.4},
        {"label": "ResNet18 batch 16 (tiny)", "model": "resnet18", "batch": 16, "set": {},
         "target_s": 1.25, "target_ratio": 3.5, "accuracy": True},
        {"label": "ResNet18 batch 32 (tiny)", "model": "resnet18", "batch": 32, "set": {},
         "target_s": 0.8},
        {"label": "MLP-Mixer patch 4 batch 16 (tiny, c=64)", "model": "mlpmixer", "batch": 16,
         "set": {"patch_size": 4, "embed_dim": 64}, "target_ratio": 3.6},
    ],
    "shared_model": "mlp", "shared_batch": 16, "shared_epochs": 2, "shared_eval_images": 32,
    "search": ["mlp", "--trials", "4", "--epochs", "2", "--workers", "2", "--train-subset",
               "200", "--test-subset", "100", "--val-size", "50", "--set", "hidden_sizes=16"],
    "search_trials": 4, "search_epochs": 2,
}


def plan_for(tiny: bool) -> dict:
    return TINY if tiny else FULL


@dataclass
class Row:
    what: str
    measured: str
    target: str
    verdict: str


def table(rows: list[Row]) -> str:
    """The rows as one Markdown table."""
    lines = ["| what | measured | target | verdict |", "|---|---|---|---|"]
    lines += [f"| {r.what} | {r.measured} | {r.target} | {r.verdict} |" for r in rows]
    return "\n".join(lines)


def _verdict(tiny: bool, shortfalls: list[str], failure: Optional[str] = None) -> str:
    if failure:
        return f"FAILED: {failure}"
    if tiny:
        return "n/a (tiny)"
    return "meets" if not shortfalls else "short: " + "; ".join(shortfalls)


# ---------------------------------------------------------------- rows

def speed_row(m: dict, tiny: bool) -> Row:
    """One model and batch size: ours with CUDA graphs, eager, and the common recipe."""
    common, graphs, eager = m["common_steady"], m["captured_steady"], m["eager_steady"]
    capture = m.get("captured_capture_s")
    how = (f"with CUDA graphs (capture {capture:.1f} s)" if capture is not None
           else "NOT captured")
    measured = (f"{graphs:.2f} s/epoch {how}, {common / graphs:.1f}x the common recipe's "
                f"{common:.2f} s; eager {eager:.2f} s, {common / eager:.1f}x")
    targets, shortfalls = [], []
    if "target_s" in m:
        targets.append(f"<= {m['target_s']} s/epoch")
        if graphs > m["target_s"]:
            shortfalls.append(f"{graphs:.2f} s > {m['target_s']} s")
    if "target_ratio" in m:
        targets.append(f">= {m['target_ratio']}x the common recipe")
        if common / graphs < m["target_ratio"]:
            shortfalls.append(f"{common / graphs:.2f}x < {m['target_ratio']}x")
    failure = m.get("captured_capture_failure")
    return Row(m["label"], measured, " and ".join(targets),
               _verdict(tiny, shortfalls, f"capture failed ({failure})" if failure else None))


def accuracy_row(m: dict, tiny: bool) -> Row:
    """Captured against eager: the last epoch's accuracy on the test images, same seed."""
    graphs, eager = m["captured_val_acc"][-1], m["eager_val_acc"][-1]
    gap = 100 * abs(graphs - eager)
    epochs = len(m["captured_val_acc"])
    shortfalls = [f"{gap:.2f} points apart"] if gap > ACCURACY_POINTS else []
    return Row(f"{m['label']}: accuracy, CUDA graphs vs eager",
               f"{graphs:.4f} vs {eager:.4f} test accuracy after {epochs} epochs, same seed "
               f"({gap:.2f} points apart)",
               f"within {ACCURACY_POINTS} points (10 epochs)", _verdict(tiny, shortfalls))


def shared_images_per_second(numbers: dict) -> Optional[float]:
    """Images of the steady epochs of every process over the wall time from the first
    release (after the warm-up epochs) to the last process's end; None if any failed."""
    outcomes = numbers["outcomes"]
    if len(outcomes) < numbers["processes"] or any("error" in o for o in outcomes):
        return None
    window = max(o["end"] for o in outcomes) - min(o["start"] for o in outcomes)
    return sum(o["steady_images"] for o in outcomes) / window if window > 0 else None


def shared_row(numbers: dict, plan: dict) -> Row:
    n = numbers["processes"]
    how = "captured" if numbers.get("capture", "auto") == "auto" else "eager"
    what = (f"{n} {how} {plan['shared_model']} trials sharing the device "
            f"(batch {plan['shared_batch']}), aggregate")
    target = f">= {SHARED_TARGET_IMAGES_S:,} images/s"
    errors = [o["error"] for o in numbers["outcomes"] if "error" in o]
    aggregate = shared_images_per_second(numbers)
    if aggregate is None:
        reason = errors[0] if errors else f"{len(numbers['outcomes'])} of {n} reported"
        return Row(what, "no figure", target, _verdict(plan["tiny"], [], reason))
    each = [o["seconds"][1:] or o["seconds"] for o in numbers["outcomes"]]
    fraction = numbers["outcomes"][0].get("fraction")
    measured = (f"{aggregate:,.0f} images/s (steady epochs {min(map(min, each)):.2f}-"
                f"{max(map(max, each)):.2f} s each; memory cap "
                f"{'none' if fraction is None else f'{fraction:.3f} of the GPU'} per process)")
    shortfalls = ([f"{aggregate:,.0f} images/s"] if aggregate < SHARED_TARGET_IMAGES_S else [])
    return Row(what, measured, target, _verdict(plan["tiny"], shortfalls))


def project_search(numbers: dict, trials: int, epochs: int) -> dict:
    """The whole search's wall time from a part of it: the epochs all workers trained per
    second after the first trial started, times the epochs of `trials` trials; without
    pruning (every trial all `epochs`: an upper bound) and, once trials were pruned, at the
    mean epochs of the finished trials. Seconds, including the start-up seen."""
    startup = numbers.get("first_trial_after_s") or 0.0
    training = numbers["wall_s"] - startup
    if training <= 0 or not numbers["epochs_trained"]:
        return {}
    rate = numbers["epochs_trained"] / training
    projection = {"epochs_per_s": rate, "unpruned_s": startup + trials * epochs / rate}
    if numbers["pruned"]:
        mean = statistics.mean(numbers["finished_epochs"])
        projection["observed_s"] = startup + trials * mean / rate
    return projection


def search_row(numbers: dict, plan: dict) -> Row:
    trials, epochs = plan["search_trials"], plan["search_epochs"]
    what = f"search: {' '.join(plan['search'])}"
    target = (f"<= {SEARCH_TARGET_S // 60} min wall, best test accuracy >= "
              f"{SEARCH_TARGET_TEST_ACC}")
    if "error" in numbers:
        return Row(what, "no figure", target, _verdict(plan["tiny"], [], numbers["error"]))
    finished = numbers["complete"] + numbers["pruned"]
    best = numbers["best_test_acc"]
    best_text = f"best test accuracy {best:.4f}" if best is not None else "no trial complete"
    done = numbers["exit"] == 0 and finished >= trials
    shortfalls = []
    if best is None or best < SEARCH_TARGET_TEST_ACC:
        shortfalls.append(f"{best_text} (so far)" if not done else best_text)
    if done:
        measured = (f"{finished} trials ({numbers['pruned']} pruned) in "
                    f"{numbers['wall_s'] / 60:.1f} min; {best_text}")
        if numbers["wall_s"] > SEARCH_TARGET_S:
            shortfalls.append(f"{numbers['wall_s'] / 60:.1f} min")
        return Row(what, measured, target, _verdict(plan["tiny"], shortfalls))
    projection = project_search(numbers, trials, epochs)
    measured = (f"stopped at the budget: {finished} of {trials} trials finished "
                f"({numbers['complete']} complete, {numbers['pruned']} pruned), "
                f"{numbers['epochs_trained']} epochs in {numbers['wall_s']:.0f} s; {best_text}")
    if projection:
        measured += (f"; projected whole search {projection['unpruned_s'] / 60:.1f} min "
                     f"without pruning (upper bound)")
        if "observed_s" in projection:
            measured += f", {projection['observed_s'] / 60:.1f} min at the pruning seen"
        likely = projection.get("observed_s", projection["unpruned_s"])
        if likely > SEARCH_TARGET_S:
            shortfalls.append(f"projected {likely / 60:.1f} min")
    verdict = _verdict(plan["tiny"], shortfalls)
    return Row(what, measured, target,
               verdict if plan["tiny"] else f"projected: {verdict}")


def checks_row(checks: Optional[list]) -> Row:
    what, target = "capture checks (bench/capture_checks.py)", "all pass"
    if checks is None:
        return Row(what, "skipped: no CUDA", target, "not run")
    failed = [c.name for c in checks if not c.passed]
    measured = f"{len(checks) - len(failed)} of {len(checks)} passed"
    return Row(what, measured + (f"; failed: {'; '.join(failed)}" if failed else ""), target,
               "meets" if not failed else "FAILED (details in gpu_check.json)")
