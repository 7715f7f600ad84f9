"""MLP-Mixer's search space: the report's lists (../shared/REPORT-FACTS.md), duplicates removed.

patch_size stays at 4 unless --set or --grid changes it (the report searched it on its own).
"""
from spaces.shared import BATCH_SIZES, MOMENTA, OPTIMIZERS
from spaces.space import Space

LEARNING_RATES = (0.01, 0.025, 0.05, 0.075, 0.001, 0.0025, 0.005, 0.0075, 0.0001, 0.00025, 0.00075)
WEIGHT_DECAYS = (0.01, 0.075, 0.001, 0.005, 0.0075, 0.0001, 0.00025, 0.0005, 0.00075, 0.000025)
EMBED_DIM_RANGE = (64, 300)          # "any integer 64..300", inclusive
NUM_BLOCKS = (2, 3, 4, 5, 6)
DROP_RATES = (0.1, 0.2, 0.3, 0.4)

# The report's Table 2 (its MLP-Mixer top 8), all at patch size 4.
PUBLISHED_TOP = (
    dict(batch_size=128, lr=0.0075, optimizer="adam", momentum=0.7, weight_decay=0.01, embed_dim=128, num_blocks=4, drop_rate=0.2, max_train_acc=0.7578, max_val_acc=0.7941, test_acc=0.7289),
    dict(batch_size=128, lr=0.001, optimizer="adamw", momentum=0.9, weight_decay=0.0005, embed_dim=256, num_blocks=4, drop_rate=0.0, max_train_acc=0.95250, max_val_acc=0.9537, test_acc=0.7590),
    dict(batch_size=32, lr=0.001, optimizer="adamw", momentum=0.9, weight_decay=0.0005, embed_dim=256, num_blocks=4, drop_rate=0.0, max_train_acc=0.9099, max_val_acc=0.9124, test_acc=0.7637),
    dict(batch_size=128, lr=0.005, optimizer="adamw", momentum=0.85, weight_decay=0.005, embed_dim=64, num_blocks=4, drop_rate=0.2, max_train_acc=0.7404, max_val_acc=0.784, test_acc=0.7339),
    dict(batch_size=64, lr=0.005, optimizer="adamw", momentum=0.95, weight_decay=1e-05, embed_dim=150, num_blocks=4, drop_rate=0.0, max_train_acc=0.8715, max_val_acc=0.8892, test_acc=0.74452),
    dict(batch_size=64, lr=0.00075, optimizer="adam", momentum=0.8, weight_decay=0.0001, embed_dim=275, num_blocks=4, drop_rate=0.0, max_train_acc=0.95208, max_val_acc=0.9501, test_acc=0.76054),
    dict(batch_size=64, lr=0.0001, optimizer="adam", momentum=0.95, weight_decay=7.5e-05, embed_dim=200, num_blocks=4, drop_rate=0.0, max_train_acc=0.801, max_val_acc=0.813, test_acc=0.722),
    dict(batch_size=128, lr=0.00075, optimizer="momentum", momentum=0.8, weight_decay=2.5e-05, embed_dim=200, num_blocks=3, drop_rate=0.0, max_train_acc=0.92784, max_val_acc=0.9343, test_acc=0.75623),
)

SPACE = Space(
    model="mlpmixer",
    lists=dict(batch_size=BATCH_SIZES, optimizer=OPTIMIZERS, lr=LEARNING_RATES,
               momentum=MOMENTA, weight_decay=WEIGHT_DECAYS, num_blocks=NUM_BLOCKS,
               drop_rate=DROP_RATES),
    int_ranges=dict(embed_dim=EMBED_DIM_RANGE),
    fixed_params=("patch_size",),
    published_top=PUBLISHED_TOP,
)

# The report's patch-size table (experiment 3): c = 256, 4 blocks, defaults otherwise.
PUBLISHED_PATCH_TABLE = (
    dict(patch_size=4, parameters=2188298, max_train_acc=0.9525, max_val_acc=0.9537, test_acc=0.7591, test_loss=0.9951, avg_train_seconds=28.47, avg_val_seconds=1.84),
    dict(patch_size=8, parameters=2175818, max_train_acc=0.9393, max_val_acc=0.9594, test_acc=0.7426, test_loss=1.0432, avg_train_seconds=26.79, avg_val_seconds=1.80),
    dict(patch_size=16, parameters=2310938, max_train_acc=0.8891, max_val_acc=0.9109, test_acc=0.6549, test_loss=1.2920, avg_train_seconds=26.21, avg_val_seconds=1.88),
)
