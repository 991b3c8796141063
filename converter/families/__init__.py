"""The model families the converter knows, found by config.json's model_type."""
from ..errors import ConversionError
from .base import DecoderFamily
from .deepseek_v3 import DeepseekV3
from .gpt_oss import GptOss
from .mixtral import Mixtral
from .olmoe import Olmoe
from .phimoe import Phimoe
from .qwen_moe import Qwen2Moe, Qwen3Moe

FAMILIES: tuple[type[DecoderFamily], ...] = (Mixtral, Qwen3Moe, Qwen2Moe, Olmoe, Phimoe, DeepseekV3, GptOss)


def supported() -> list[str]:
    return sorted(t for f in FAMILIES for t in f.model_types)


def family_for(config: dict) -> DecoderFamily:
    model_type = config.get("model_type")
    if not model_type:
        raise ConversionError("config.json has no model_type; supported: " + ", ".join(supported()))
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam(config)
    raise ConversionError(f"unsupported architecture {model_type!r}; supported: " + ", ".join(supported()))
