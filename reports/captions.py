"""A heading and a one-line caption for every figure and picture a page shows, by its name.

The names are file-friendly (`curves_val_loss`, `first_layer_rgb_trial26`, the reproduction's
`fig03_curves_train_acc` and `search4_param_importances`); a person reads the heading and the
caption instead, so a page never heads anything with a file name.
"""
from __future__ import annotations

import re

from reports.pictures import CAPTIONS as PICTURE_CAPTIONS

CURVE_CAPTION = ("one line per trial against epoch: the best in colour (legend), the rest grey; "
                 "pruned trials dotted, a trial pruned after one epoch a dot")
FIGURES = {  # name -> (heading, caption)
    "curves_train_loss": ("Training loss per epoch", CURVE_CAPTION),
    "curves_val_loss": ("Validation loss per epoch", CURVE_CAPTION),
    "curves_train_acc": ("Training accuracy per epoch", CURVE_CAPTION),
    "curves_val_acc": ("Validation accuracy per epoch", CURVE_CAPTION),
    "anytime_epochs": ("Best so far against epochs spent",
                       "the best validation accuracy of a complete trial so far (line) against "
                       "the epochs every trial trained, pruned ones included; each trial a dot "
                       "where it ended (pruned hollow)"),
    "anytime_seconds": ("Best so far against seconds spent",
                        "the same against the trials' seconds, start to end, summed"),
    "patch_parameters": ("Parameters against patch size",
                         "the model's trainable parameters for each patch size"),
    "patch_train_seconds": ("Training time against patch size",
                            "mean seconds per training epoch, the first (warm-up) epoch apart"),
    "patch_val_seconds": ("Validation time against patch size",
                          "mean seconds per validation pass"),
    "optimization_history": ("Optimization history",
                             "each trial's value (max validation accuracy) in trial order, "
                             "with the best so far"),
    "param_importances": ("Parameter importances",
                          "how much of the value's variation each parameter explains "
                          "(Optuna's estimate over the complete trials)"),
    "parallel_coordinate": ("Parallel coordinates",
                            "one line per complete trial through its parameters to its value"),
}
PICTURE_HEADINGS = {
    "first_layer_rgb": "First layer of the best trial (RGB)",
    "first_layer_gray": "First layer of the best trial (grayscale)",
    "token_mixing_block1": "Token mixing in block 1 of the best trial",
    "first_layer_rows": "First layer of the best trial",
}


def figure_text(name: str) -> tuple[str, str]:
    """(heading, caption) of a plotly figure: `fig03_curves_train_acc` is the report's
    Figure 3, `search4_...` a figure of experiment 4's search."""
    prefix, base = _split(name)
    heading, caption = FIGURES.get(base, (base.replace("_", " ").capitalize(), ""))
    return f"{prefix}{heading}", _sentence(caption)


def picture_text(name: str) -> tuple[str, str]:
    """(heading, caption) of a first-layer picture named `VARIANT_trialN` (maybe numbered)."""
    prefix, base = _split(name)
    variant, _, trial = base.rpartition("_trial")
    if not variant:
        variant, trial = base, ""
    heading = PICTURE_HEADINGS.get(variant, variant.replace("_", " ").capitalize())
    if trial:
        heading += f", #{trial}"
    return f"{prefix}{heading}", _sentence(PICTURE_CAPTIONS.get(variant, ""))


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}." if text else ""


def _split(name: str) -> tuple[str, str]:
    """`fig03_rest` -> ("Figure 3: ", "rest"); `search4_rest` -> ("Search 4: ", "rest")."""
    match = re.fullmatch(r"(fig|search)(\d+)_(.+)", name)
    if not match:
        return "", name
    kind, number, rest = match.groups()
    return f"{'Figure' if kind == 'fig' else 'Experiment'} {int(number)}: ", rest
