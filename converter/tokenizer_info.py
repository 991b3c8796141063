"""The tokenizer part of the manifest: file, chat template, special tokens and stop ids."""
from __future__ import annotations

from pathlib import Path

from .checkpoint import Checkpoint
from .errors import ConversionError


def _token_text(tok) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def chat_template(ckpt: Checkpoint) -> str | None:
    jinja = ckpt.dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tpl = ckpt.tokenizer_config.get("chat_template")
    if isinstance(tpl, list):   # named templates: take the default one
        tpl = next((t.get("template") for t in tpl if t.get("name") == "default"), None)
    return tpl if isinstance(tpl, str) else None


def tokenizer_info(ckpt: Checkpoint, vocab_size: int) -> dict:
    from tokenizers import Tokenizer
    try:
        tok = Tokenizer.from_file(str(ckpt.dir / "tokenizer.json"))
    except Exception as e:  # tokenizers raises plain Exception subclasses for bad JSON
        raise ConversionError(f"malformed tokenizer.json: {e}") from None
    if tok.get_vocab_size(with_added_tokens=True) > vocab_size:
        raise ConversionError(f"tokenizer.json has {tok.get_vocab_size(with_added_tokens=True)} tokens, "
                              f"more than the model's vocab_size {vocab_size}")
    tc = ckpt.tokenizer_config
    specials = {k: _token_text(tc.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    eos = _ids(ckpt.generation_config.get("eos_token_id")) + _ids(ckpt.config.get("eos_token_id"))
    if specials["eos_token"] and tok.token_to_id(specials["eos_token"]) is not None:
        eos.append(tok.token_to_id(specials["eos_token"]))
    return {"file": "tokenizer.json", "chat_template": chat_template(ckpt),
            "special_tokens": {k: v for k, v in specials.items() if v},
            "eos_token_ids": sorted(set(eos)),
            "bos_token_id": ckpt.generation_config.get("bos_token_id", ckpt.config.get("bos_token_id"))}


def tokenizer_files(ckpt: Checkpoint) -> list[Path]:
    return [p for p in (ckpt.dir / n for n in ("tokenizer.json", "tokenizer_config.json")) if p.is_file()]
