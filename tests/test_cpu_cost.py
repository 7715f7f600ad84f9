"""search.cpu_cost: what a search on a CPU says in its first lines, and the README's quick look
(the command a newcomer runs first): parsed as the command line parses it, before the main
job, projected to end within minutes where the main job takes days."""
from __future__ import annotations

import re
import shlex

from helpers import REPO
from search.cli.arguments import build_parser, run_settings, study_spec
from search.cpu_cost import cpu_line
from search.settings import StudySpec


def setup_block() -> list[list[str]]:
    """The README's set-up block, one command per line (continuations joined, comments cut)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("```bash\npython3 -m venv") + len("```bash\n"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def readme_search(name: str):
    """(index in the set-up block, the settings) of its `optuna-search` line naming `name`."""
    lines = setup_block()
    index = next(i for i, words in enumerate(lines)
                 if words[:1] == ["optuna-search"] and name in " ".join(words))
    args = build_parser().parse_args(lines[index][1:])
    return index, run_settings(args, study_spec(args))


def test_the_quick_look_comes_before_the_main_job_and_parses_as_a_small_search():
    quick_at, quick = readme_search("mlp-quick")
    main_at, main = readme_search("resnet18")
    assert quick_at < main_at
    assert quick.study_name == "mlp-quick" and quick.spec.model == "mlp"
    assert (quick.trials, quick.spec.epochs, quick.spec.train_subset) == (16, 4, 5000)
    assert quick.spec.fixed == {"optimizer": "adamw", "batch_size": 256}
    assert quick.spec.pruner == "hyperband" and quick.spec.sampler == "tpe"
    assert quick.spec.data == main.spec.data == "../shared/data/cifar10-jpeg.tar.gz"
    assert main.spec.model == "resnet18" and (main.trials, main.spec.epochs) == (30, 30)
    # the cost table's main-job row names the command's --workers
    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("| the main job"))
    assert (f"`--workers {main.workers}`" in row) == (main.workers > 1)


def test_on_a_cpu_the_main_job_reads_in_days_and_points_to_the_quick_look():
    _, main = readme_search("resnet18")
    line = cpu_line(main.spec, 30, 45000, 5000, threads=2, workers=main.workers)
    assert re.fullmatch(r"on the CPU: ~\d+ min an epoch, up to \d+ days in all; "
                        r"see README's quick look", line), line
    assert len(line) <= 80


def test_the_quick_look_projects_minutes_and_points_nowhere():
    _, quick = readme_search("mlp-quick")
    line = cpu_line(quick.spec, 16, 5000, 1000, threads=2)
    assert re.fullmatch(r"on the CPU: ~\d s an epoch, up to [12] min in all", line), line
    assert len(line) <= 80


def test_more_threads_project_faster_epochs_and_a_grid_counts_its_points():
    spec = StudySpec(model="resnet18", epochs=30)
    two, eight = (cpu_line(spec, 30, 45000, 5000, threads=t) for t in (2, 8))
    minutes = [int(re.search(r"~(\d+) min an epoch", line).group(1)) for line in (two, eight)]
    assert minutes[0] > 3 * minutes[1]
    assert "in all" not in cpu_line(spec, 0, 45000, 5000, threads=2)   # nothing left to run
