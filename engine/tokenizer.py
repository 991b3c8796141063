"""Text <-> token ids with the package's tokenizer.json (Hugging Face `tokenizers`) and chat templates
rendered with jinja2 the way transformers renders them."""
from __future__ import annotations

from datetime import datetime

from jinja2 import StrictUndefined, TemplateError  # noqa: F401  (TemplateError is re-raised to callers)
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from .package import Package
from .errors import PackageError, PromptError


def _raise(message):
    raise TemplateError(message)


class TextTokenizer:
    def __init__(self, package: Package):
        info = package.manifest["tokenizer"]
        try:
            self.json = bytes(package.shard(info["file"])).decode("utf-8")
            self.tok = Tokenizer.from_str(self.json)
        except PackageError:
            raise
        except Exception as e:
            raise PromptError(f"cannot read the package's tokenizer: {e}") from None
        self.chat_template = info.get("chat_template")
        self.special_tokens = info.get("special_tokens", {})
        self.eos_token_ids = set(info.get("eos_token_ids", []))
        self._eos_first = (info.get("eos_token_ids") or [None])[0]
        self.vocab_size = package.config["vocab_size"]
        self._template = None
        self._grammar_tokens = None

    def grammar_tokens(self):
        """The vocabulary as constrained decoding sees it (engine/constraint.py), built the first time."""
        if self._grammar_tokens is None:
            from .constraint import GrammarTokens
            self._grammar_tokens = GrammarTokens(self.json, self.vocab_size, self._eos_first)
        return self._grammar_tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        """One token as text (its vocabulary entry for special tokens, which decode() leaves out)."""
        return self.decode([token_id]) or self.tok.id_to_token(token_id) or ""

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise PromptError("this model has no chat template; pass a plain text prompt instead")
        for m in messages:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise PromptError("chat messages must be objects with string 'role' and 'content'")
        if self._template is None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._template = env.from_string(self.chat_template)
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except TemplateError as e:
            raise PromptError(f"chat template: {e}") from None

    def prompt_ids(self, prompt) -> list[int]:
        """A prompt is text, a list of token ids, or a list of chat messages."""
        if isinstance(prompt, str):
            return self.encode(prompt)
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
            return self.encode(self.render_chat(list(prompt)), add_special_tokens=False)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
        raise PromptError("a prompt is a string, a list of token ids, or a list of chat messages")


class StreamDecoder:
    """Text of a growing list of ids, one token at a time, with `tokenizers`' own DecodeStream (which holds
    back the bytes of an unfinished UTF-8 character and needs no re-decoding of the whole text). DecodeStream
    raises ("Invalid prefix encountered") when a token changes how text it already gave decodes: with
    byte-fallback tokenizers (Llama's, Mistral's), a byte that turns an earlier run of bytes into invalid
    UTF-8 makes every byte of the run a replacement character, the valid ones before it too. From then on
    this sequence decodes its ids so far again at each token, as web/tokenizer.js's twin always does: `text`
    is then the decoding of the ids so far (its start may differ from what was handed out before)."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tok = tokenizer.tok
        self.stream = DecodeStream(skip_special_tokens=True)
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.stream is not None:
            try:
                piece = self.stream.step(self.tok, token_id) or ""
                self.text += piece
                return piece
            except Exception:            # tokenizers raises a bare Exception for the prefix mismatch
                self.stream = None
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):      # an unfinished character: wait for its next byte
            return ""
        piece = text[len(self.text):]
        self.text = text
        return piece
