"""Register a study's figures with optuna-dashboard, so `optuna-search dashboard` shows them.

Uses optuna_dashboard.save_plotly_graph_object(study, figure, *, graph_object_id=...), which
stores each figure's JSON in the study's system attrs. A fixed id per figure overwrites the
previous version, so calling this after every search keeps one copy of each figure.
The first-layer pictures are already per-trial artifacts (first_layer.png, uploaded by the
objective), which the dashboard shows on each trial's page.
"""
from __future__ import annotations

import optuna

from reports.figures import study_figures


def register_dashboard_figures(study: optuna.Study) -> list[str]:
    """Save every plotly figure of the study for optuna-dashboard; return their ids."""
    from optuna_dashboard import save_plotly_graph_object

    ids = []
    for name, figure in study_figures(study).items():
        # ids allow letters, digits, "-", "_", ":" and "."; figure names are snake_case
        ids.append(save_plotly_graph_object(study, figure, graph_object_id=name))
    return ids
