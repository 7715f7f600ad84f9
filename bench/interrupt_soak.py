"""Interrupt soak: SIGINT and SIGTERM at random moments of `--workers 2` and `--ray local`
searches; every stop must be quick, quiet and leave nothing running.

    python bench/interrupt_soak.py                                  # 100 + 100 per launcher
    python bench/interrupt_soak.py --launchers workers --signals 3  # a short run
    python bench/interrupt_soak.py --signals 0 --startup 30   # Ctrl-C while workers import
    python bench/interrupt_soak.py --signals 0 --imports 100  # ... while the launcher imports

Each try runs a search of short synthetic trials (the MLP with 16 hidden units on 100 images, 6
trials of 20 epochs, 2 runners) in a folder of its own and sends one signal at a moment drawn
at random over the whole life of such a run (an uninterrupted run of each launcher is timed
first): the interpreter's start-up (before our handler is on: Python's own), imports, data
loading, training, testing, saving, between trials, the summary, the exit. SIGINT goes to the
whole group (a terminal's Ctrl-C) or to the launcher alone (`kill -INT`), SIGTERM to the group
(Slurm's scancel) or to the launcher alone, in turn. A run that had ended before its signal is
not counted and is tried again. Each try must:
- exit within 10 s of the signal (still running after 60 s: a hang; its group is killed),
- exit with status 130 (or 0 where the signal came once the search's work was done: its
  summary printed or being printed, or the process exiting),
- print one or two lines of ours on stderr ("optuna-search: ..." or "interrupted; ...") and
  nothing else (no traceback),
- leave no trial RUNNING in its study, and no process of its own (workers, Ray's processes,
  the Ray watchdog) within 30 s.
`--startup N`: N Ctrl-Cs to the group of a `--workers 2` search at a moment drawn while its
workers import (from their start to the first line a worker prints); `--imports N`: N signals
(SIGINT and SIGTERM in turn) to the group while its launcher imports torch and Optuna and
loads the data (from its handler being on to its line naming the data); the same checks.

A signal in the launcher's own interpreter start-up (~0.1-0.3 s after the command, before any
code of ours runs: Python's default actions, and a KeyboardInterrupt inside `site` is its
"Fatal Python error: init_import_site", exit 1) is no test of our code: such tries are
checked and printed all the same, but counted apart ("interpreter") and do not fail the soak.

It prints one line per try, then per launcher and signal the counts, the median and worst
seconds from the signal to the exit; exit status 1 if any try of our code failed. Failed tries
keep their folder (stdout, stderr, study) under --keep.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEARCH = ["mlp", "--trials", "6", "--epochs", "20", "--data", "synthetic", "--train-subset",
          "100", "--test-subset", "100", "--val-size", "50", "--set", "hidden_sizes=16",
          "--sampler", "random", "--pruner", "none"]
LAUNCHERS = {"workers": ["--workers", "2"], "ray": ["--ray", "local", "--workers", "2"]}
EXIT_SECONDS = 10      # the most a stop may take
HANG_SECONDS = 60      # no exit by then: a hang
GONE_SECONDS = 30      # the most the processes of a search may stay after its exit
OURS = ("optuna-search: ", "interrupted; ")
DATA_LINE = "data "    # the launcher's line once its imports and its data are done


@dataclass
class Try:
    launcher: str
    signum: int
    to_group: bool
    phase: str = ""
    code: int | None = None
    seconds: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ours(self) -> bool:
        """Whether our handler was on when the signal was sent (else Python's start-up)."""
        return self.phase != "interpreter"

    def line(self) -> str:
        where = "group" if self.to_group else "launcher"
        took = f"{self.seconds:5.1f} s" if self.seconds is not None else "  hang "
        verdict = ("ok" if not self.problems else
                   ("FAIL: " if self.ours else "(Python's start-up, not counted) ")
                   + "; ".join(self.problems))
        return (f"{self.launcher:7} {signal.Signals(self.signum).name:7} to the {where:8} "
                f"{self.phase:18} exit {self.code} {took}  {verdict}")


def start(launcher: str, folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", *SEARCH, *LAUNCHERS[launcher],
         "--storage", f"sqlite:///{folder / 'soak.db'}"], cwd=folder, env=env,
        stdout=open(folder / "out.txt", "w"), stderr=open(folder / "err.txt", "w"),
        start_new_session=True)


def phase(folder: Path, pid: int) -> str:
    """Where the run was, from what it had printed: interpreter (Python starting, before our
    handler: SIGTERM not caught yet), start-up (imports, the launcher's data, a local Ray
    cluster starting: until the line naming the data), runners starting, training,
    testing/saving, between trials, summary (the work done, the summary printed or being
    printed), exiting (the command over: its handler off)."""
    ours = catches_sigterm(pid)
    lines = (folder / "out.txt").read_text().splitlines()
    runner = [line for line in lines if line.startswith(("[w", "[r"))]
    if any(line.startswith("trials:") for line in lines):
        return "summary" if ours else "exiting"
    if not ours:
        return "interpreter"
    if not any(line.startswith(DATA_LINE) for line in lines):
        return "start-up"
    if not runner:
        return "runners starting"
    last = runner[-1]
    if " epoch " in last:
        done, total = last.split(" epoch ")[1].split()[0].split("/")
        return "testing/saving" if done == total else "training"
    return "between trials"


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (ours: search.cli installs it first)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:"))
                 .split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def session(pid: int) -> set[int]:
    """The processes of the search started as `pid` (its session, its Ray watchdog, and what
    holds a file of its Ray session's folder open, however re-parented)."""
    mark, found = f"_{pid}/", set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if fields[0] == "Z":
                continue
            if int(fields[3]) == pid or f"search.ray_local {pid}" in command:
                found.add(int(entry.name))
                continue
            links = [os.readlink(f) for f in (entry / "fd").iterdir()]
        except (OSError, IndexError, ValueError):
            continue
        if any("/ray/session_" in link and mark in link for link in links):
            found.add(int(entry.name))
    return found


def running_trials(folder: Path) -> int:
    db = folder / "soak.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as connection:
            return connection.execute(
                "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    except sqlite3.OperationalError:   # no tables yet: stopped before the study was made
        return 0


def workers(pid: int) -> int:
    """How many --workers processes the launcher `pid` has started (alive)."""
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1]
                                            .split()[1]) == pid:
                count += b"spawn_main" in (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
    return count


def wait_for_handler(search: subprocess.Popen) -> bool:
    """Until the search handles SIGTERM (its handler is on); False if it ended first."""
    while search.poll() is None:
        if catches_sigterm(search.pid):
            return True
        time.sleep(0.005)
    return False


def wait_for_workers(search: subprocess.Popen, count: int = 2) -> bool:
    """Until `count` --workers processes of the search run; False if it ended first."""
    while search.poll() is None:
        if workers(search.pid) >= count:
            return True
        time.sleep(0.02)
    return False


def one_try(launcher: str, signum: int, to_group: bool, moment, keep: Path) -> Try | None:
    """Start a search, signal it at `moment(search)` (seconds to sleep first, or None: no
    moment), check how it stopped. None: it had ended before the signal (not counted)."""
    folder = Path(tempfile.mkdtemp(prefix=f"soak-{launcher}-"))
    search = start(launcher, folder)
    attempt = Try(launcher, signum, to_group)
    try:
        delay = moment(search)
        if delay is None:
            return None
        time.sleep(delay)
        if search.poll() is not None:
            return None
        attempt.phase = phase(folder, search.pid)
        try:
            (os.killpg if to_group else os.kill)(search.pid, signum)
        except ProcessLookupError:   # it ended this very moment
            return None
        sent = time.monotonic()
        try:
            attempt.code = search.wait(timeout=HANG_SECONDS)
            attempt.seconds = time.monotonic() - sent
        except subprocess.TimeoutExpired:
            attempt.problems.append(f"no exit {HANG_SECONDS} s after the signal (a hang)")
            os.killpg(search.pid, signal.SIGKILL)
            search.wait()
        check(attempt, search, folder)
        return attempt
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait()
        if attempt.problems:
            shutil.move(str(folder), keep / folder.name)
            attempt.problems.append(f"kept in {keep / folder.name}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def check(attempt: Try, search: subprocess.Popen, folder: Path) -> None:
    problems = attempt.problems
    if attempt.seconds is not None and attempt.seconds > EXIT_SECONDS:
        problems.append(f"exit after {attempt.seconds:.1f} s")
    done = attempt.phase in ("summary", "exiting")   # the work was done: 0 is right too
    if attempt.code != 130 and not (done and attempt.code == 0):
        problems.append(f"exit status {attempt.code}")
    deadline = time.monotonic() + GONE_SECONDS
    while (left := session(search.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        problems.append(f"{len(left)} process(es) left: {sorted(left)}")
    lines = (folder / "err.txt").read_text().strip().splitlines()
    said = 1 <= len(lines) <= 2 and all(line.startswith(OURS) for line in lines)
    if not (said or (attempt.code == 0 and not lines)):   # a finished search says nothing
        problems.append(f"stderr: {lines[:3]}{' ...' if len(lines) > 3 else ''}")
    running = running_trials(folder)
    if running:
        problems.append(f"{running} trial(s) RUNNING")


def timed_run(launcher: str) -> dict[str, float]:
    """An uninterrupted run: seconds from its start to its handler being on, to its workers'
    start, to its line naming the data (imports and data done), to a runner's first line, to
    its exit."""
    folder = Path(tempfile.mkdtemp(prefix=f"soak-{launcher}-"))
    started = time.monotonic()
    search = start(launcher, folder)
    marks: dict[str, float] = {}
    while search.poll() is None:
        now = time.monotonic() - started
        if "workers" not in marks and launcher == "workers" and workers(search.pid) >= 2:
            marks["workers"] = now
        if "handler" not in marks and catches_sigterm(search.pid):
            marks["handler"] = now
        if "data line" not in marks and any(line.startswith(DATA_LINE) for line in
                                             (folder / "out.txt").read_text().splitlines()):
            marks["data line"] = now
        if "runner line" not in marks and phase(folder, search.pid) not in (
                "interpreter", "start-up", "runners starting"):
            marks["runner line"] = now
        time.sleep(0.05)
    marks["exit"] = time.monotonic() - started
    code = search.returncode
    shutil.rmtree(folder, ignore_errors=True)
    if code != 0:
        sys.exit(f"an uninterrupted {launcher} run exited {code}")
    return marks


def counted(tries: list[Try], label: str, *how) -> int:
    """One counted try (`how`: one_try's arguments), retried while its run ends before its
    signal; noted in `tries` as `label` and printed. Returns how many runs were not counted."""
    skipped = 0
    while (attempt := one_try(*how)) is None:
        skipped += 1
    attempt.launcher = label
    tries.append(attempt)
    print(attempt.line(), flush=True)
    return skipped


def summary(tries: list[Try]) -> list[str]:
    lines = []
    for launcher in dict.fromkeys(t.launcher for t in tries):
        for signum in dict.fromkeys(t.signum for t in tries if t.launcher == launcher):
            every = [t for t in tries if t.launcher == launcher and t.signum == signum]
            group = [t for t in every if t.ours]
            times = [t.seconds for t in group if t.seconds is not None]
            failed = sum(bool(t.problems) for t in group)
            hangs = sum(t.seconds is None for t in group)
            phases = {p: sum(t.phase == p for t in group) for p in dict.fromkeys(
                t.phase for t in group)}
            codes = {c: sum(t.code == c for t in group) for c in dict.fromkeys(
                t.code for t in group)}
            lines.append(
                f"{launcher:7} {signal.Signals(signum).name:7} {len(group):3} tries: "
                f"{len(group) - failed} ok, {failed} failed, {hangs} hangs; exit after the "
                f"signal: median {statistics.median(times):.1f} s, worst {max(times):.1f} s"
                if times else f"{launcher} {signal.Signals(signum).name}: no try of our code")
            lines.append("        moments: " + ", ".join(f"{p} {n}" for p, n in phases.items()))
            lines.append("        exit statuses: " + ", ".join(
                f"{c} x{n}" for c, n in codes.items()))
            python = [t for t in every if not t.ours]
            if python:
                lines.append(
                    f"        and {len(python)} in the interpreter's start-up (before our code, "
                    f"not counted): exit " + ", ".join(
                        f"{t.code}{' (' + t.problems[0] + ')' if t.problems else ''}"
                        for t in python))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launchers", default="workers,ray")
    parser.add_argument("--signals", type=int, default=100, help="of each kind, per launcher")
    parser.add_argument("--startup", type=int, default=0,
                        help="Ctrl-Cs while a --workers 2 search's workers import")
    parser.add_argument("--imports", type=int, default=0,
                        help="signals (SIGINT, SIGTERM in turn, to the group) while a "
                             "--workers 2 search's launcher imports and loads its data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir()) / "soak-failed")
    args = parser.parse_args()
    args.keep.mkdir(parents=True, exist_ok=True)
    # The searches get SIGINT's default, as from a terminal: started in the background of a
    # script (`nohup ... &`), this process and its children would have SIGINT ignored, and a
    # SIGINT before a search's handler is on (the interpreter's start-up) would do nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng, tries, skipped = random.Random(args.seed), [], 0
    print(f"load average {os.getloadavg()[0]:.1f} (5-minute: {os.getloadavg()[1]:.1f})")
    launchers = [name for name in args.launchers.split(",") if name] if args.signals else []
    if args.startup or args.imports:
        launchers = list(dict.fromkeys(launchers + ["workers"]))
    life = {}
    for launcher in launchers:
        life[launcher] = timed_run(launcher)
        print(f"{launcher}: an uninterrupted run: " + ", ".join(
            f"{mark} at {seconds:.1f} s" for mark, seconds in life[launcher].items()), flush=True)
    for launcher in launchers if args.signals else []:
        whole = life[launcher]["exit"]
        plan = [(signum, k % 2 == 0) for k in range(args.signals)
                for signum in (signal.SIGINT, signal.SIGTERM)]
        for signum, to_group in plan:
            skipped += counted(tries, launcher, launcher, signum, to_group,
                               lambda _search: rng.uniform(0, whole), args.keep)
    if args.imports:   # from the handler being on to the launcher's line naming the data
        window = life["workers"]["data line"] - life["workers"]["handler"]
        for k in range(args.imports):
            skipped += counted(
                tries, "imports", "workers", (signal.SIGINT, signal.SIGTERM)[k % 2], True,
                lambda search: rng.uniform(0, window) if wait_for_handler(search) else None,
                args.keep)
    if args.startup:   # from the workers' start to a worker's first line
        window = life["workers"]["runner line"] - life["workers"]["workers"]
        for _ in range(args.startup):
            skipped += counted(
                tries, "startup", "workers", signal.SIGINT, True,
                lambda search: rng.uniform(0, window) if wait_for_workers(search) else None,
                args.keep)
    print(f"\n{len(tries)} tries ({skipped} runs had ended before their signal: not counted); "
          f"load average {os.getloadavg()[0]:.1f}")
    for line in summary(tries):
        print(line)
    return 1 if any(t.problems for t in tries if t.ours) else 0


if __name__ == "__main__":
    sys.exit(main())
