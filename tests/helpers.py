"""Shared by the tests that run real searches: short trials, a subprocess runner, and
conditions read from an SQLite study (tests wait on conditions, never on fixed sleeps), and
the one rule for a missing requirement (skip_or_fail)."""
from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn

import optuna
import pytest

REPO = Path(__file__).resolve().parents[1]
# The MLP with 16 hidden units on 100 synthetic images: a trial takes a fraction of a second.
TINY = ["--data", "synthetic", "--train-subset", "100", "--test-subset", "100",
        "--val-size", "50", "--set", "hidden_sizes=16", "--sampler", "random",
        "--pruner", "none"]
# The heartbeat every second, a trial silent for 4 s is dead: faults resolve within seconds.
FAST_HEARTBEAT = {"OPTUNA_SEARCH_HEARTBEAT": "1", "OPTUNA_SEARCH_GRACE": "4"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip for a missing requirement (PostgreSQL, a browser, mount, Ray), except under CI=true:
    .ci/run installs them all and sets CI=true, so there a missing one is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason, allow_module_level=True)  # also at a module's top (test_ray_cluster)


def load(db: Path, study: str = "mlp") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{db}")


def states(db: Path, study: str = "mlp") -> list[str]:
    return [t.state.name for t in load(db, study).get_trials()]


def integrity(db: Path) -> str:
    """SQLite's own check of the file: "ok" when it is whole."""
    with contextlib.closing(sqlite3.connect(db)) as connection:  # closed, not only committed
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def query(db: Path, sql: str, default=None):
    """One value from the study file, or `default` while it (or its tables) is not there."""
    if not Path(db).exists():
        return default
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True,
                                                timeout=10)) as connection:
            row = connection.execute(sql).fetchone()
        return row[0] if row else default
    except sqlite3.OperationalError:  # tables not made yet, or locked for a moment
        return default


def finished(db: Path) -> int:
    return query(db, "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')", 0)


def running_with_an_epoch(db: Path) -> int:
    return query(db, "SELECT COUNT(DISTINCT t.trial_id) FROM trials t JOIN "
                     "trial_intermediate_values v ON v.trial_id = t.trial_id "
                     "WHERE t.state = 'RUNNING'", 0)


def wait_until(condition: Callable[[], bool], seconds: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what or condition}")


def wait_for_running(db: Path, count: int, seconds: float = 60) -> None:
    """Until `count` trials are RUNNING and each has reported an epoch."""
    wait_until(lambda: running_with_an_epoch(db) >= count, seconds,
               f"{count} trials running at once, each with an epoch")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(argv: list[str], code: str = "", cwd: Path | None = None, preexec_fn=None,
            **env) -> subprocess.Popen:
    """optuna-search in a subprocess of its own session, after `code` (a monkeypatch); in the
    test's own folder unless `cwd` is given (tests/conftest.py); `preexec_fn` runs in the child
    before it starts (say, to ignore a signal)."""
    script = f"import sys\n{code}\nfrom search.cli import entry\nentry(sys.argv[1:])"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-c", script, *argv], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": path, **env},
                            start_new_session=True, preexec_fn=preexec_fn)


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children_of(pid: int) -> list[int]:
    """The pids of a process's children (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(")")[-1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    """A process's command line, "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def maps(pid: int) -> str:
    """The files a process has mapped (its loaded libraries), "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


# A sitecustomize.py that patches a module in every `--workers` process of a search (spawned
# processes run no code of the launcher's, but every Python process runs sitecustomize first).
_IN_WORKERS = '''
import importlib.machinery, sys

def patch(module):
{patch}

class Patch:
    def find_spec(self, name, path=None, target=None):
        if name != {module!r}:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec

if "--multiprocessing-fork" in sys.argv:   # a spawned worker, not the launcher
    sys.meta_path.insert(0, Patch())
'''


def in_workers(folder: Path, module: str, patch: str, **env) -> dict[str, str]:
    """run_cli's environment for a search whose `--workers` processes run `patch` (Python code
    that may use `module`, the module just imported; indented by 4) once `module` is imported
    there; the launcher runs as it is. `env` is added (the patch reads it from os.environ)."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(_IN_WORKERS.format(module=module, patch=patch))
    path = os.pathsep.join(filter(None, [str(folder), str(REPO), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, **env}


def image_folder(root: Path, per_class: int = 3) -> Path:
    """A tiny data set in image-folder layout: train/<class>/*.png (4 x per_class) and
    test/<class>/*.png (per_class) for CIFAR-10's 10 classes, each class its own colour."""
    from PIL import Image
    for split, count in (("train", 4 * per_class), ("test", per_class)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (32, 32), (c * 25, i * 9 % 256, 80)).save(folder / f"{i}.png")
    return root


def run_in_terminal(command: list[str], cwd: Path, columns: int = 80, rows: int = 40,
                    until: str | None = None, **env) -> tuple[int, str]:
    """`command` in a pseudo-terminal of `columns` x `rows` (0 x 0: a terminal that reports
    no size), with the repository on PYTHONPATH: (exit status, everything it wrote, escape
    sequences and carriage returns included). `until`: stop reading once it was written."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    main_fd, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal,
                               cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), **env})
    os.close(terminal)
    seen, deadline = "", time.monotonic() + 300
    while (until is None or until not in seen) and time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(main_fd, 65536).decode(errors="replace")
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=300)
    os.close(main_fd)
    return process.returncode, seen


def table_rows(text: str) -> list[dict[str, str]]:
    """A text table's rows (`studies`, `report` on a terminal: headers, a rule of dashes,
    rows) as {header: cell}, its columns where the rule has them."""
    import re
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if re.fullmatch(r"-+( +-+)*", line))
    spans = [m.span() for m in re.finditer(r"-+", lines[rule])]
    spans[-1] = (spans[-1][0], None)   # the last column's cells may be wider than its rule
    cells = lambda line: [line[a:b].strip() for a, b in spans]  # noqa: E731
    rows = []
    for line in lines[rule + 1:]:
        if not line.strip() or line.startswith("Key:"):   # the table's key follows it
            break
        rows.append(dict(zip(cells(lines[rule - 1]), cells(line))))
    return rows
