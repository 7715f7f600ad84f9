"""search.progress: what a person sees. On a terminal (a real pseudo-terminal here) the running
trial's bar moves before the first trial ends; in a log, plain lines without carriage returns,
one per epoch; with --quiet, one line per trial."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

from helpers import REPO, TINY
from search.progress import Progress, duration

SLOW_TRIALS = ["mlp", "--trials", "2", "--epochs", "4", *TINY, "--set", "batch_size=16"]


def test_a_terminal_shows_the_trials_epochs_moving_before_the_first_trial_ends(tmp_path):
    main_fd, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    search = subprocess.Popen(
        [sys.executable, "-m", "search.cli", *SLOW_TRIALS, "--storage",
         f"sqlite:///{tmp_path / 's.db'}"], stdin=terminal, stdout=terminal, stderr=terminal,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(terminal)
    seen, deadline = "", time.monotonic() + 300
    while "COMPLETE" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], 1)
        if ready:
            try:
                seen += os.read(main_fd, 65536).decode(errors="replace")
            except OSError:  # the process closed the terminal
                break
    search.wait(timeout=300)
    os.close(main_fd)
    before = seen[:seen.index("COMPLETE")]
    assert re.search(r"trial 0: epoch [2-4]/4, val_acc 0\.\d{4} \|", before)  # epochs moved
    assert re.search(r"\d+%", before) and "\r" in before                   # a live bar
    assert "study: 0/2 trials, ETA" in before                              # from epochs
    assert search.returncode == 0


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
    progress.study(finished=1, target=3, epochs=10, best=0.5)
    progress.trial_started(1, 10)
    for epoch in (1, 2):
        progress.epoch_seconds.append(2.0)
    progress.epoch = 2
    assert progress.study_eta() == (2 * 10 - 2) * 2.0  # 18 epochs left at 2 s each


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (5, 65, 3600 + 125, None)] == ["5s", "1m05s", "1h02m", "?"]
