"""Property tests (hypothesis) of every reader of outside input: whatever bytes arrive, the safetensors
reader, the manifest loader and the API request parser either accept them or raise their one clear error
type, never anything else. The safetensors reader agrees with the reference library on what it accepts.
CI runs a bounded number of examples; `python scripts/fuzz.py` runs many more and prints the figures."""
import json
import os
from collections import Counter
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError

from webmoe.converter.errors import ConversionError
from webmoe.converter.safetensors_file import SafetensorsFile
from webmoe.engine.constraint import Constraint, GrammarTokens
from webmoe.format.manifest import read_manifest, seal_manifest
from webmoe.engine.package import PackageError
from webmoe.serve.api_errors import ApiError
from webmoe.serve.api_requests import parse_chat, parse_completion

EXAMPLES = int(os.environ.get("WEBMOE_FUZZ_EXAMPLES", "150"))
DEMO = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"
OUTCOMES: Counter = Counter()          # (reader, "accepted" | "clear error") -> cases; scripts/fuzz.py prints it
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)

# --- safetensors ---------------------------------------------------------------------------------------

DTYPE_NAMES = ["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "Q4", 5, None]
entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPE_NAMES),
    "shape": st.lists(st.integers(-1, 5) | st.sampled_from([2.0, True, "3"]), max_size=3),
    "data_offsets": st.lists(st.integers(-2, 200) | st.sampled_from([4.0, None]), min_size=0, max_size=3)})


@st.composite
def safetensors_files(draw):
    """Headers near valid ones: honest tensors laid end to end, then perturbed."""
    names = draw(st.lists(st.text("abcxyz._", min_size=1, max_size=5), max_size=4, unique=True))
    header, at = {}, 0
    for n in names:
        dtype = draw(st.sampled_from(["F32", "F16", "I32"]))       # numpy has no bfloat16 to compare with
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = int(np.prod(shape)) * {"F32": 4, "F16": 2, "I32": 4}[dtype]
        header[n] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + size]}
        at += size
    if names and draw(st.booleans()):
        header[draw(st.sampled_from(names))] = draw(entry)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(),
                                                      max_size=2))
    data_len = max(0, at + draw(st.integers(-6, 6)))
    h = json.dumps(header).encode() if draw(st.integers(0, 9)) else draw(st.binary(max_size=40))
    n = len(h) + draw(st.sampled_from([0, 0, 0, 1, -1, 2**40]))
    return struct.pack("<Q", max(n, 0)) + h + bytes(data_len)


def reference_load(path):
    try:
        return safetensors.numpy.load_file(path)
    except (SafetensorError, ValueError, TypeError, OverflowError):
        return None


@FUZZ
@given(safetensors_files())
def test_safetensors_reader_agrees_with_the_reference(raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        path.write_bytes(raw)
        ref = reference_load(path)
        try:
            ours = SafetensorsFile(path)
        except ConversionError:
            ours = None
        OUTCOMES["safetensors reader", "clear error" if ours is None else "accepted"] += 1
        if b'"BF16"' in raw:               # the reference's numpy API cannot load bfloat16: no verdict to compare
            return
        if ref is None:
            assert ours is None, "accepted a file the reference library refuses"
            return
        assert ours is not None, "refused a file the reference library reads"
        assert sorted(ours.entries) == sorted(ref)
        for name, arr in ref.items():
            assert ours.read_raw(name).tobytes() == arr.tobytes() and ours.shape(name) == arr.shape


# --- the manifest ----------------------------------------------------------------------------------------

MANIFEST = json.loads((DEMO / "manifest.json").read_text())


def paths(value, prefix=()):
    """Every (path, value) inside a JSON value."""
    yield prefix, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        yield from paths(v, prefix + (k,))


SITES = [p for p, _ in paths(MANIFEST) if p and p[0] not in ("hf_config", "generation_config", "manifest_sha256")]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(SITES), json_values), min_size=1, max_size=3), st.booleans())
def test_manifest_loader_accepts_or_gives_a_package_error(edits, reseal):
    m = json.loads(json.dumps(MANIFEST))
    for path, value in edits:
        target = m
        try:
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    raw = seal_manifest(m) if reseal else json.dumps(m).encode()
    try:
        read_manifest(raw)
        OUTCOMES["manifest loader", "accepted"] += 1
    except PackageError:
        OUTCOMES["manifest loader", "clear error"] += 1


@FUZZ
@given(st.binary(max_size=200))
def test_manifest_loader_on_arbitrary_bytes(raw):
    with pytest.raises(PackageError):
        read_manifest(raw)
    OUTCOMES["manifest loader", "clear error"] += 1


# --- API requests ----------------------------------------------------------------------------------------

FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
          "stream", "user", "n", "logprobs", "tools", "top_logprobs", "response_format", "stream_options",
          "presence_penalty", "prompt", "echo"]
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "tool", 3]),
                                           "content": st.text(max_size=10) | json_values}), max_size=3)


valid_requests = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                                 "content": st.text(max_size=10)}), min_size=1, max_size=3)},
    optional={"temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "max_tokens": st.integers(1, 100),
              "seed": st.integers(0, 2**32), "stop": st.text(min_size=1, max_size=3), "stream": st.booleans()})


@st.composite
def near_valid_requests(draw):
    body = draw(valid_requests)
    for _ in range(draw(st.integers(0, 2))):
        body[draw(st.sampled_from(FIELDS))] = draw(json_values | messages)
    return body


@FUZZ
@given(near_valid_requests() | st.dictionaries(st.sampled_from(FIELDS), json_values | messages, max_size=5)
       | json_values)
def test_request_parser_accepts_or_gives_a_400(body):
    try:
        args = parse_chat(json.dumps(body).encode())
    except ApiError as e:
        assert e.status == 400 and json.loads(e.text)["error"]["message"]
        OUTCOMES["API request parser", "clear error"] += 1
        return
    OUTCOMES["API request parser", "accepted"] += 1
    assert args.prompts[0] and isinstance(args.sampling["max_new_tokens"], int)


SCHEMA_WORDS = ["type", "properties", "required", "items", "enum", "const", "minimum", "maximum", "minLength",
                "maxLength", "pattern", "format", "anyOf", "oneOf", "allOf", "$ref", "$defs", "additionalProperties"]
schema_values = st.recursive(
    json_scalars | st.sampled_from(["object", "string", "integer", "number", "array", "boolean", "null", "#/$defs/a"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(SCHEMA_WORDS) | st.text(max_size=3),
                                                                inner, max_size=4), max_leaves=10)


DEMO_TOKENS = GrammarTokens((DEMO / "tokenizer.json").read_text(), 2048, 2)      # <|end|> is token 2


@FUZZ
@given(st.dictionaries(st.sampled_from(SCHEMA_WORDS), schema_values, max_size=4))
def test_any_json_schema_compiles_or_gives_a_400(schema):
    """A response_format's JSON schema becomes a grammar llguidance accepts, or a 400 naming
    response_format: never a crash, never a grammar that fails later."""
    body = {"messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}
    try:
        args = parse_chat(json.dumps(body).encode())
    except ApiError as e:
        assert e.status == 400 and "response_format" in json.loads(e.text)["error"]["message"]
        OUTCOMES["JSON schema", "clear error"] += 1
        return
    OUTCOMES["JSON schema", "accepted"] += 1
    Constraint(DEMO_TOKENS, args.sampling["grammar"]).mask()      # a first token exists


@FUZZ
@given(st.binary(max_size=100))
def test_request_parser_on_arbitrary_bytes(raw):
    try:
        parse_chat(raw)
        OUTCOMES["API request parser", "accepted"] += 1
    except ApiError as e:
        assert e.status == 400
        OUTCOMES["API request parser", "clear error"] += 1


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), json_values | st.text(max_size=5), max_size=5)
       | st.fixed_dictionaries({"prompt": st.text(max_size=10) | st.lists(st.text(max_size=5), max_size=3)},
                               optional={"n": st.integers(-1, 9), "logprobs": st.integers(-1, 6),
                                         "max_tokens": st.integers(0, 10)}))
def test_completion_parser_accepts_or_gives_a_400(body):
    try:
        args = parse_completion(json.dumps(body).encode())
    except ApiError as e:
        assert e.status == 400 and json.loads(e.text)["error"]["message"]
        OUTCOMES["API request parser", "clear error"] += 1
        return
    OUTCOMES["API request parser", "accepted"] += 1
    assert args.prompts and all(isinstance(p, str) for p in args.prompts) and 1 <= args.n <= 8
