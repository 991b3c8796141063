"""Streaming detokenization (engine/tokenizer.py's StreamDecoder) with a byte-fallback tokenizer built the
way Llama's and Mistral's tokenizer.json state theirs (BPE with <0xNN> byte tokens; decoders: "▁" to a
space, byte fallback, fuse, strip one leading space). A model emits any token in any order: a byte that
makes an earlier run of bytes invalid UTF-8 rewrites text already handed out, which tokenizers'
DecodeStream refuses with an exception; generation must go on."""
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models

from webmoe.engine.tokenizer import StreamDecoder

PIECES = ["▁the", "her", "▁a", "e", "▁"]


def byte_fallback_tokenizer() -> Tokenizer:
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    for piece in PIECES:
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


TOK = byte_fallback_tokenizer()
BYTE = {b: 1 + b for b in range(256)}
WORD = {piece: 257 + i for i, piece in enumerate(PIECES)}


def stream(ids: list[int]) -> tuple[StreamDecoder, list[str]]:
    decoder = StreamDecoder(SimpleNamespace(tok=TOK))
    return decoder, [decoder.push(i) for i in ids]


def test_a_byte_that_invalidates_earlier_bytes_does_not_stop_the_stream():
    # "X" (0x58) is a whole character when it comes; 0x82 makes the run 58 82 96 24 4F invalid UTF-8, which
    # the byte-fallback decoder turns into one replacement character per byte, the "X" included
    ids = [BYTE[0x58], BYTE[0x82], BYTE[0x96], BYTE[0x24], BYTE[0x4F], WORD["her"], WORD["▁the"]]
    decoder, pieces = stream(ids)
    assert pieces[0] == "X"
    assert decoder.text == TOK.decode(ids, skip_special_tokens=True) == "\ufffd" * 5 + "her the"
    assert pieces[-1] == " the"


def test_a_character_split_over_byte_tokens_comes_whole():
    ids = [WORD["▁the"], *(BYTE[b] for b in "é".encode()), WORD["▁a"]]     # é: C3 A9
    decoder, pieces = stream(ids)
    assert pieces == ["the", "", "é", " a"]
    assert decoder.text == "theé a"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, len(TOK.get_vocab()) - 1), max_size=24))
def test_any_token_sequence_streams(ids):
    """Whatever the ids, every push returns text; the stream's text is the ids' decoding, or that of the ids
    up to a character still waiting for its bytes."""
    decoder, pieces = stream(ids)
    assert all(isinstance(p, str) for p in pieces)
    full = TOK.decode(ids, skip_special_tokens=True)
    prefixes = {TOK.decode(ids[:k], skip_special_tokens=True) for k in range(len(ids) + 1)}
    assert decoder.text == full or decoder.text in prefixes or full.startswith(decoder.text)
