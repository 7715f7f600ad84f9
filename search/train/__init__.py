"""The trainer and what it needs: data on the device, models, the training and evaluation
steps (CUDA graphs on a GPU), learning-rate schedules, checkpoints, a GPU's memory shared by
trials. It knows nothing of Optuna or the storage (tests/test_layers.py checks the imports):
search/objective.py turns a trial into a Config and calls trainer.train."""
