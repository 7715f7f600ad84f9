"""Study -> top-k table (Markdown/CSV/HTML), figures (plotly), first-layer pictures.

Reports read everything from the storage (a trial's data through reports/trial_data.py) and
the artifact store; they never import `search.train.trainer`.
"""
