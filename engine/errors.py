"""The errors the engine raises for bad input or an unusable machine, each with a message for the user."""
from .device import DeviceError
from .executor import PlanError
from .expert_cache import ExpertCacheError
from .package import PackageError
from .shaders import ShaderError
from .tokenizer import PromptError

USER_ERRORS = (DeviceError, PlanError, ExpertCacheError, PackageError, ShaderError, PromptError)
