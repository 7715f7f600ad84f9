"""The MLP's search space. The report only swept its activation (experiment 1); for a search
it shares ResNet18's optimiser lists and adds the activation."""
from spaces.resnet18 import BATCH_SIZES, LEARNING_RATES, MOMENTA, OPTIMIZERS, WEIGHT_DECAYS
from spaces.space import Space

ACTIVATIONS = ("relu", "sigmoid", "tanh")

SPACE = Space(
    model="mlp",
    lists=dict(batch_size=BATCH_SIZES, optimizer=OPTIMIZERS, lr=LEARNING_RATES,
               momentum=MOMENTA, weight_decay=WEIGHT_DECAYS, activation=ACTIVATIONS),
    fixed_params=("hidden_sizes", "drop_rate"),
)
