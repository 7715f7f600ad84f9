"""The MLP's search space. The report only swept its activation (experiment 1); for a search
it takes ResNet18's optimiser lists (spaces/shared.py) and adds the activation."""
from spaces.shared import (BATCH_SIZES, MOMENTA, OPTIMIZERS, RESNET18_LEARNING_RATES,
                           RESNET18_WEIGHT_DECAYS)
from spaces.space import Space

ACTIVATIONS = ("relu", "sigmoid", "tanh")

SPACE = Space(
    model="mlp",
    lists=dict(batch_size=BATCH_SIZES, optimizer=OPTIMIZERS, lr=RESNET18_LEARNING_RATES,
               momentum=MOMENTA, weight_decay=RESNET18_WEIGHT_DECAYS, activation=ACTIVATIONS),
    fixed_params=("hidden_sizes", "drop_rate"),
)
