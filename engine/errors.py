"""The errors the engine raises for bad input or an unusable machine, each with a message for the user.
Every class lives here but PackageError, the package format's (format/errors.py); web/errors.js is the
browser's twin, name for name."""
from webmoe.format.errors import PackageError

__all__ = ["PackageError", "PlanError", "ShaderError", "ExpertCacheError", "PromptError", "OptionError",
           "DeviceError", "USER_ERRORS"]


class PlanError(ValueError):
    """A plan step does not fit its kernel, or a plan buffer does not fit the adapter."""


class ShaderError(ValueError):
    """A kernel source is missing or its preprocessor directives are wrong."""


class ExpertCacheError(RuntimeError):
    """The expert cache's budget or pinned experts cannot work for this model."""


class PromptError(ValueError):
    """A prompt, token ids or generation settings are not acceptable."""


class OptionError(ValueError):
    """An engine or server option (engine/options.py, a routing rule) is not acceptable: the operator's
    setting, not a request's."""


class DeviceError(RuntimeError):
    """No usable WebGPU adapter."""


USER_ERRORS = (DeviceError, PlanError, ExpertCacheError, PackageError, ShaderError, PromptError, OptionError)
