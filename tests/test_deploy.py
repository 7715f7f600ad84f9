"""deploy/: the Slurm script and the Kubernetes Job parse, and every optuna-search command they
run exists with those options (parsed by the real command line, variables filled in)."""
from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from search.cli.arguments import build_parser, run_settings, study_spec

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PLACEHOLDERS = {"OPTUNA_SEARCH_DB": "postgresql://user:secret@db-host:5432/optuna",
                "MODEL": "resnet18", "TRIALS": "30", "DATA": "/data/cifar10-jpeg.tar.gz"}


def fill(text: str) -> str:
    """Shell and Kubernetes variable references replaced by example values."""
    text = re.sub(r"\$\((\w+)\)", lambda m: PLACEHOLDERS[m.group(1)], text)         # $(VAR)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: PLACEHOLDERS[m.group(1)], text)        # $VAR


def check_command(argv: list[str]) -> None:
    """The command parses, and its settings resolve as the CLI would resolve them."""
    assert argv[0] == "optuna-search", argv
    args = build_parser().parse_args(argv[1:])
    if args.command not in ("worker", "studies", "report", "plots", "dashboard", "info"):
        run_settings(args, study_spec(args))


def sbatch_commands(path: Path) -> list[list[str]]:
    joined = path.read_text().replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        if not re.match(r"\s*(srun\s+)?optuna-search\s", line):  # a command it runs
            continue
        words = shlex.split(fill(line))
        commands.append(words[words.index("optuna-search"):])
    return commands


def test_the_slurm_script_parses_and_runs_a_real_command():
    script = DEPLOY / "slurm" / "optuna-search.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "#SBATCH --array=" in text and "#SBATCH --requeue" in text
    commands = sbatch_commands(script)
    assert len(commands) == 1
    for argv in commands:
        check_command(argv)
    assert "--storage" in commands[0] and "postgresql://" in " ".join(commands[0])


def test_the_kubernetes_job_parses_and_runs_a_real_command():
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "job.yaml").read_text()))
    (job,) = documents
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["parallelism"] >= 2 and spec["template"]["spec"]["restartPolicy"] == "OnFailure"
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"] for e in container["env"]}
    assert {"OPTUNA_SEARCH_DB", "OPTUNA_SEARCH_ARTIFACTS"} <= env
    check_command([fill(word) for word in container["command"] + container["args"]])
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    artifacts = next(e["value"] for e in container["env"] if e["name"] == "OPTUNA_SEARCH_ARTIFACTS")
    assert artifacts in mounted


def test_the_image_installs_extras_the_project_has():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    extras = re.findall(r"pip install [^\n]*'\.\[([\w,]+)\]'", dockerfile)
    declared = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras and all(extra in declared for group in extras for extra in group.split(","))
    for package in ("search", "spaces", "storage", "reports"):
        assert f"COPY {package} {package}" in dockerfile


@pytest.mark.parametrize("argv", [["optuna-search", "resnet18", "--no-such-option"],
                                  ["optuna-search", "worker"]])
def test_the_checker_itself_refuses_a_command_that_does_not_exist(argv):
    with pytest.raises(Exception):
        check_command(argv)
