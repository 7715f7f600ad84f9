"""ResNet18's search space: the report's lists (../shared/REPORT-FACTS.md), duplicates removed."""
from spaces.shared import (BATCH_SIZES, MOMENTA, OPTIMIZERS, RESNET18_LEARNING_RATES,
                           RESNET18_WEIGHT_DECAYS)
from spaces.space import Space

# The report's Table 1 (its ResNet18 top 8): the searched parameters and published accuracies.
PUBLISHED_TOP = (
    dict(batch_size=64, lr=0.01, optimizer="sgd", momentum=0.6, weight_decay=2.5e-05, max_train_acc=0.9700, max_val_acc=0.9760, test_acc=0.8533),
    dict(batch_size=64, lr=0.0025, optimizer="adam", momentum=0.3, weight_decay=2.5e-05, max_train_acc=0.97844, max_val_acc=0.9837, test_acc=0.8911),
    dict(batch_size=512, lr=0.001, optimizer="adamw", momentum=0.6, weight_decay=0.00075, max_train_acc=0.9701, max_val_acc=0.9553, test_acc=0.8720),
    dict(batch_size=64, lr=0.0075, optimizer="sgd", momentum=0.9, weight_decay=0.00075, max_train_acc=0.9671, max_val_acc=0.9754, test_acc=0.8647),
    dict(batch_size=512, lr=0.0001, optimizer="adamw", momentum=0.9, weight_decay=0.0075, max_train_acc=0.9694, max_val_acc=0.9670, test_acc=0.8794),
    dict(batch_size=128, lr=0.0025, optimizer="momentum", momentum=0.5, weight_decay=2.5e-05, max_train_acc=0.9345, max_val_acc=0.9396, test_acc=0.8203),
    dict(batch_size=128, lr=0.0025, optimizer="adam", momentum=0.9, weight_decay=2.5e-05, max_train_acc=0.9781, max_val_acc=0.9800, test_acc=0.8859),
    dict(batch_size=128, lr=0.0025, optimizer="momentum", momentum=0.9, weight_decay=2.5e-05, max_train_acc=0.9781, max_val_acc=0.9800, test_acc=0.8859),
)

SPACE = Space(
    model="resnet18",
    lists=dict(batch_size=BATCH_SIZES, optimizer=OPTIMIZERS, lr=RESNET18_LEARNING_RATES,
               momentum=MOMENTA, weight_decay=RESNET18_WEIGHT_DECAYS),
    published_top=PUBLISHED_TOP,
)
