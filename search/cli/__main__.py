"""`python -m search.cli ...`: the optuna-search command."""
import sys

from search.cli import main

sys.exit(main())
