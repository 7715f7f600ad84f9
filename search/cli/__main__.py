"""`python -m search.cli ...`: the optuna-search command."""
from search.cli import entry

entry()
