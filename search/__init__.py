"""optuna-search: the service that trains (data, models, trainer, objective, study, CLI)."""
