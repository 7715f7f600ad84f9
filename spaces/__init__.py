"""Search spaces as data: the report's ranges per model and the defaults they start from.

`spaces` imports neither torch nor `search`: a space is lists of values plus one `suggest`.
"""
from spaces.defaults import Config, ConfigError, PARAMETER_NAMES, parse_value, apply_overrides
from spaces.registry import SPACES, MODEL_NAMES, get_space

__all__ = [
    "Config", "ConfigError", "PARAMETER_NAMES", "parse_value", "apply_overrides",
    "SPACES", "MODEL_NAMES", "get_space",
]
