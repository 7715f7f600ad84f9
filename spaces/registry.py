"""Model name -> its search space."""
from spaces import mlp, mlpmixer, resnet18
from spaces.defaults import ConfigError
from spaces.space import Space

SPACES: dict[str, Space] = {s.model: s for s in (resnet18.SPACE, mlpmixer.SPACE, mlp.SPACE)}
MODEL_NAMES = tuple(SPACES)


def get_space(model: str) -> Space:
    if model not in SPACES:
        raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    return SPACES[model]
