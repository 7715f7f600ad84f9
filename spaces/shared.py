"""Value lists more than one model's space uses, each named once (../shared/REPORT-FACTS.md):
a model's own lists live in its module, and what it takes from here it names. Changing a list
here changes every space that names it, and each study made with the old list refuses the new
one with a line naming it (search/study.py)."""
from spaces.defaults import OPTIMIZERS

# "batch size, optimizer, momentum: as ResNet18" for MLP-Mixer; the MLP has no lists of its
# own in the report, so it searches these.
BATCH_SIZES = (64, 128, 256, 512, 1024)
MOMENTA = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# ResNet18's learning rates and weight decays, which the MLP's search uses too.
RESNET18_LEARNING_RATES = (0.01, 0.025, 0.05, 0.075, 0.001, 0.0025, 0.0075, 0.0001, 0.00025,
                           0.00075)
RESNET18_WEIGHT_DECAYS = (0.01, 0.075, 0.001, 0.005, 0.0075, 0.0001, 0.00025, 0.00075)

__all__ = ["BATCH_SIZES", "MOMENTA", "OPTIMIZERS", "RESNET18_LEARNING_RATES",
           "RESNET18_WEIGHT_DECAYS"]
