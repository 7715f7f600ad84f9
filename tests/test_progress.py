"""search.progress: what a person sees. On a terminal (a real pseudo-terminal here) the running
trial's bar moves before the first trial ends, and every line fits the terminal's width (80
and 120 columns, and 80 where the terminal reports 0); in a log, plain lines without carriage
returns, one per epoch; with --quiet, one line per trial."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from helpers import REPO, TINY, image_folder, load
from helpers import run_in_terminal as in_terminal
from search.progress import Progress, duration, key_values
from search.terminal import fit

SLOW_TRIALS = ["mlp", "--trials", "2", "--epochs", "4", *TINY, "--set", "batch_size=16"]
# Median pruning after 5 complete trials: the later trials' lines may say PRUNED and why.
PRUNED_TOO = ["mlp", "--trials", "7", "--epochs", "2", *TINY, "--pruner", "median"]
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")   # tqdm's cursor moves


def run_in_terminal(argv: list[str], tmp_path, columns: int, rows: int = 40,
                    until: str | None = None, storage: str | None = None,
                    **env) -> tuple[int, str]:
    """The real command in a pseudo-terminal of `columns` x `rows` (0 x 0: a terminal that
    reports no size): (exit status, everything it wrote). `until`: stop reading there."""
    storage = storage or f"sqlite:///{tmp_path / 's.db'}"
    return in_terminal([sys.executable, "-m", "search.cli", *argv, "--storage", storage],
                       tmp_path, columns, rows, until, **env)


def drawn(seen: str) -> list[str]:
    """What the terminal drew, as runs of text that start at its left edge: split at line
    feeds and carriage returns, cursor moves left out. One longer than the terminal's width
    is one the terminal wrapped itself, wherever the width fell."""
    return [piece for line in ESCAPE.sub("", seen).split("\n") for piece in line.split("\r")]


def test_a_terminal_shows_the_trials_epochs_moving_before_the_first_trial_ends(tmp_path):
    code, seen = run_in_terminal(SLOW_TRIALS, tmp_path, columns=120, until="COMPLETE")
    before = seen[:seen.index("COMPLETE")]
    assert re.search(r"trial 0: epoch [2-4]/4, val_acc 0\.\d{4} \|", before)  # epochs moved
    assert re.search(r"\d+%", before) and "\r" in before                   # a live bar
    assert re.search(r"study: 0/2 trained, ETA \d+s \|", before)          # from the steps
    assert code == 0
    assert max(len(piece) for piece in drawn(seen)) <= 120


@pytest.mark.parametrize("columns", [80, 0])
def test_every_line_fits_80_columns_and_a_terminal_without_a_size_counts_as_80(
        columns, tmp_path):
    code, seen = run_in_terminal(PRUNED_TOO, tmp_path, columns=columns,
                                 rows=40 if columns else 0)
    assert code == 0, seen[-2000:]
    pieces = drawn(seen)
    too_wide = [piece for piece in pieces if len(piece) > 80]
    assert not too_wide, too_wide
    text = ESCAPE.sub("", seen)
    assert re.match(r"study 'mlp' in\s+\S+s\.db: 7\s+trials\s+of\s+2\s+epochs;\s+loading",
                    text)   # before torch loads
    # the bars and their words, also where the terminal gave no size
    assert any(re.match(r"trial \d: epoch 1/2 \|.*\| +\d+% \[", p) for p in pieces)
    assert any(re.match(r"study: \d/7 trained, ETA \S+ \|", p) for p in pieces)
    assert any(re.match(r"trial \d: testing the best epoch's weights \|", p) for p in pieces)
    assert any(re.match(r"trial \d: (pruned; )?saving curves and first-layer pictures", p)
               for p in pieces)
    # the finished trials' lines, wrapped by us between parameters (indented), none cut
    assert len([p for p in pieces if re.match(r"trial +\d+ (COMPLETE|PRUNED) ", p)]) == 7
    assert all(re.match(r"( {4}\S|\S| *$)", piece) for piece in pieces)
    lines = "\n".join(pieces)
    best = lines[lines.index("best: trial"):lines.index("table: ")]
    assert re.search(r"val_acc=0\.\d{4} test_acc=0\.\d{4}\s+batch_size=\d+\s", best)
    assert "{" not in best and "'" not in best                     # key=value, not a dict
    for pruned in re.findall(r"PRUNED .*?\)\n", lines, re.S):
        assert re.search(r"pruned at\s+epoch\s+\d:\s+best\s+val\s+acc\s+0\.\d{4}\s+<\s+"
                         r"median\s+0\.\d{4}", pruned), pruned


UNIT_AFTER_A_WRAP = re.compile(r"\s*(ms|s|min|h|days?|[KMG]B|%)(\W|$)")


def test_a_newcomer_sees_three_lines_then_the_bars_the_data_named_once(tmp_path):
    """What the README's quick look shows, on a data folder decoded for the first time (its
    note is replaced by the data's line): at most 3 rows of 80 before the first bar, the data
    named once in the whole output, the CPU said with its time per epoch, the study bar naming
    its best trial, and no number parted from its unit by a wrap."""
    image_folder(tmp_path / "my-pics", per_class=4)
    argv = ["mlp", "--trials", "7", "--epochs", "2", "--data", "my-pics", "--val-size", "4",
            "--set", "hidden_sizes=16", "--sampler", "random", "--pruner", "median"]
    code, seen = run_in_terminal(argv, tmp_path, columns=80, storage="sqlite:///s.db",
                                 OPTUNA_SEARCH_CACHE=str(tmp_path / "cache"))
    assert code == 0, seen[-2000:]
    start = seen[:seen.index("study: 0/7 trained")]        # before the first bar is drawn
    rows = ESCAPE.sub("", start).split("\n")[:-1]           # each ended by a line feed
    assert len(rows) <= 3, rows
    lines = [row.rstrip("\r").split("\r")[-1].rstrip() for row in rows]   # as drawn
    assert lines[0] == "study 'mlp' in s.db: 7 trials of 2 epochs; loading..."
    assert lines[1] == "data my-pics: 156 train / 4 val / 40 test"
    assert re.fullmatch(r"on the CPU: ~\d+ s an epoch, up to \d+ (s|min) in all", lines[2])
    assert "decoding the images once" in start               # said, then written over
    assert seen.count("my-pics") == 1
    pieces = [p.rstrip() for p in drawn(seen)]
    assert max(len(piece) for piece in pieces) <= 80
    for before, after in zip(pieces, pieces[1:]):
        assert not (re.search(r"\d$", before) and UNIT_AFTER_A_WRAP.match(after)), (before, after)
    # the study bar names the best trial, by number, as the study has it
    best = load(tmp_path / "s.db").best_trial
    shown = re.findall(r"best val_acc (0\.\d{4}) \(trial (\d+)\)", seen)[-1]
    assert shown == (f"{best.value:.4f}", str(best.number))


def test_a_wrap_never_parts_a_number_from_its_unit():
    """The wrap falls, at some width, right after "14.1": it must take the "s" along."""
    line = "data cifar10-jpeg.tar.gz: 60,000 images, 10 classes, ready in 14.1 s (content x)"
    for width in range(50, 80):
        lines = fit(line, width).split("\n")
        assert all(len(part) <= width for part in lines), (width, lines)
        assert not any(part.endswith("14.1") for part in lines), (width, lines)
        assert "14.1 s" in "\n".join(lines)


def test_the_first_line_comes_before_torch_is_imported(tmp_path):
    """Said within ~2 s of Enter: the arguments are checked, torch (3-5 s) not yet loaded."""
    probe = ("import sys, search.cli.commands as commands\n"
             "def device_check(name):\n"
             "    print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
             "    sys.exit(0)\n"
             "commands.check_device = device_check\n"
             "from search.cli import main\n"
             "main(['mlp', '--data', 'synthetic', '--trials', '3'])\n")
    code, seen = run_in_terminal_python(probe, tmp_path)
    lines = seen.replace("\r", "").splitlines()
    assert code == 0, seen
    assert lines[0] == "study 'mlp' in optuna-search.db: 3 trials of 30 epochs; loading..."
    assert lines[-1] == "torch not loaded"


def run_in_terminal_python(code: str, tmp_path) -> tuple[int, str]:
    main_fd, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    process = subprocess.Popen([sys.executable, "-c", code], stdin=terminal, stdout=terminal,
                               stderr=terminal, cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(terminal)
    seen = ""
    while True:
        try:
            chunk = os.read(main_fd, 65536).decode(errors="replace")
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    process.wait(timeout=120)
    os.close(main_fd)
    return process.returncode, seen


def test_a_log_gets_plain_lines_per_epoch_and_quiet_one_per_trial(tmp_path):
    def run(*extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "search.cli", *SLOW_TRIALS, *extra,
                               "--storage", f"sqlite:///{tmp_path / 's.db'}", "--study",
                               "q" + str(len(extra))], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    log = run()
    assert "\r" not in log
    assert len(re.findall(r"^trial +\d+ epoch \d/4 val_acc=0\.\d{4} ", log, re.M)) == 8
    assert "study ETA" in log
    quiet = run("--quiet")
    assert "\r" not in quiet and " epoch " not in quiet
    assert len(re.findall(r"^trial +\d+ COMPLETE", quiet, re.M)) == 2


def test_the_study_eta_counts_epochs_not_trials():
    progress = Progress(quiet=True, tty=False)
    progress.study(finished=1, target=3, epochs=10, best=(0, 0.5))
    progress.trial_started(1, 10)
    for epoch in (1, 2):
        progress.epoch_seconds.append(2.0)
    progress.epoch = 2
    assert progress.study_eta() == (2 * 10 - 2) * 2.0  # 18 epochs left at 2 s each


def test_durations_read_at_a_glance_and_over_a_day_in_days():
    day = 24 * 3600
    assert ([duration(s) for s in (5, 65, 3600 + 125, day - 60, 1.5 * day, 660 * 3600, None)]
            == ["5s", "1m05s", "1h02m", "23h59m", "1.5 days", "28 days", "-"])


def test_the_study_eta_starts_from_the_first_steps_of_the_first_epoch():
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.study(finished=0, target=3, epochs=10, best=None)
    progress.trial_started(0, 10)
    assert progress.study_eta() is None                  # nothing measured yet
    progress.step(1, 5, 20)                              # a quarter of epoch 1
    per_epoch = progress.seconds_per_epoch()
    assert per_epoch is not None and per_epoch > 0
    assert progress.study_eta() == pytest.approx((3 * 10 - 0.25) * per_epoch, rel=0.2)
    assert re.search(r"study: 0/3 trained, ETA \S+ \|", out.getvalue())
    progress.close()


def test_after_the_last_epoch_the_bar_says_what_the_trial_does():
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.study(finished=0, target=1, epochs=1, best=None)
    progress.trial_started(0, 1)
    progress.step(1, 10, 10)
    progress.epoch_done(1, 1, 0.5)
    progress.finishing("testing the best epoch's weights")
    last = out.getvalue().split("\r")[-1]
    assert "trial 0: testing the best epoch's weights |" in last and "<" not in last
    progress.close()


def test_lines_wrap_between_parameters_never_inside_one():
    params = {"batch_size": 512, "optimizer": "momentum", "lr": 0.0075, "momentum": 0.8,
              "weight_decay": 0.0001, "activation": "sigmoid", "hidden_sizes": (512, 256)}
    line = "trial  12 COMPLETE val_acc=0.2850 epochs=3     7.6s  " + key_values(params)
    for width in (80, 60, 40):
        lines = fit(line, width).split("\n")
        assert len(lines) > 1 and all(len(part) <= width for part in lines)
        assert all(part.startswith("    ") for part in lines[1:])
        words = " ".join(lines).split()
        assert set(f"{k}=" + (str(v) if k != "hidden_sizes" else "512,256")
                   for k, v in params.items()) <= set(words)
    assert fit(line, None) == line                       # a log: whole lines


def test_a_value_a_trial_has_not_got_reads_as_a_dash():
    """A trial failed before its first epoch: no value, no epochs, no duration."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState
    from search.progress import trial_line
    trial = optuna.trial.create_trial(
        state=TrialState.FAIL, params={"lr": 0.01},
        distributions={"lr": CategoricalDistribution([0.01])})
    line = trial_line(trial)
    assert re.match(r"trial +-?\d+ FAIL +val_acc=- epochs=- +-  lr=0.01$", line), line


def test_the_data_line_of_the_readmes_commands_fits_80_columns():
    """The quick look's split and the whole of CIFAR-10, from the README's data path."""
    import torch
    from search.train.data import Dataset, Images

    def images(count: int) -> Images:
        return Images(torch.empty(0), torch.zeros(count))
    for train, val, test in ((5000, 1000, 1000), (45000, 5000, 10000)):
        data = Dataset(images(train), images(val), images(test), [],
                       "../shared/data/cifar10-jpeg.tar.gz")
        assert len(f"data {data.describe()}") <= 80, data.describe()
