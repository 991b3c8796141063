"""Which format (format/weight_formats.py) each part of a model's weight matrices is stored in. `--dtype` names
a preset; `--experts-dtype` and its siblings change one part. Norms, biases, routers and gates stay f32
whatever is chosen (routing decisions are sensitive, and those tensors are small)."""
from __future__ import annotations

from webmoe.format.weight_formats import FORMATS

from .errors import ConversionError

# routed experts; dense feed-forward layers and shared experts; attention projections; the token
# embedding (also the LM head when the two are tied); an untied LM head
PARTS = ("experts", "ffn", "attention", "embed", "head")

# q4 is 4-bit where the bytes are (experts, feed-forward) and 8-bit where quality is most sensitive
# (attention, embedding, head): docs/format.md has the measurements behind it
PRESETS: dict[str, dict[str, str]] = {
    "f32": dict.fromkeys(PARTS, "f32"),
    "f16": dict.fromkeys(PARTS, "f16"),
    "q8": dict.fromkeys(PARTS, "q8"),
    "q4": {"experts": "q4", "ffn": "q4", "attention": "q8", "embed": "q8", "head": "q8"},
}


def weight_dtypes(preset: str, overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    """{part: format} from a preset and per-part choices (None = the preset's)."""
    if preset not in PRESETS:
        raise ConversionError(f"--dtype must be one of {', '.join(PRESETS)}, got {preset!r}")
    out = dict(PRESETS[preset])
    for part, dtype in (overrides or {}).items():
        if part not in PARTS:
            raise ConversionError(f"no weight part {part!r} (parts: {', '.join(PARTS)})")
        if dtype is None:
            continue
        if dtype not in FORMATS:
            raise ConversionError(f"--{part}-dtype must be one of {', '.join(FORMATS)}, got {dtype!r}")
        out[part] = dtype
    return out
