"""Every case of issue 10 (tried as an attacker and an unlucky user would) as a regression test: each bad
input ends in one clear error, never a traceback, a hang, or a package that runs wrong. The safetensors
reader is compared with the reference `safetensors` library on the same files."""
import http.client
import json
import os
import struct

import numpy as np
import pytest
import safetensors.numpy
from safetensors import SafetensorError

from browser import serving
from test_bad_input import copy_ckpt, edit_config, good_ckpt, good_pkg  # noqa: F401  (fixtures)
from webmoe.converter.convert import convert
from webmoe.converter.errors import ConversionError
from webmoe.converter.safetensors_file import SafetensorsFile
from webmoe.format.manifest import seal_manifest
from webmoe.engine.package import Package, PackageError
from webmoe.serve.api_errors import ApiError
from webmoe.serve.api_requests import parse_chat
from webmoe.serve.server import create_app


def sealed_copy(pkg, tmp_path, edit):
    """A copy of the package whose manifest `edit` changed, sealed again as a faulty converter would."""
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(pkg, bad)
    m = json.loads((bad / "manifest.json").read_text())
    edit(m)
    (bad / "manifest.json").write_bytes(seal_manifest(m))
    return bad


# --- the manifest ---------------------------------------------------------------------------------------

def test_any_changed_digit_of_the_manifest_is_detected(good_pkg, tmp_path):
    import shutil
    raw = (good_pkg / "manifest.json").read_bytes()
    rng = np.random.default_rng(0)
    digits = [i for i, c in enumerate(raw) if chr(c).isdigit()]
    for i in rng.choice(digits, 40, replace=False):
        bad = tmp_path / f"d{i}"
        shutil.copytree(good_pkg, bad)
        changed = bytearray(raw)
        changed[i] = ord("0") + (changed[i] - ord("0") + 1) % 10
        (bad / "manifest.json").write_bytes(changed)
        with pytest.raises(PackageError, match="changed after conversion|does not state its sha256|not valid JSON"):
            Package(bad)


def test_a_pinned_digest_must_match(good_pkg):
    digest = Package(good_pkg).digest
    assert Package(good_pkg, digest=digest).digest == digest
    with pytest.raises(PackageError, match="not the 0+ asked for"):
        Package(good_pkg, digest="0" * 64)


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["tensors"][next(iter(m["tensors"]))].update(size=True), "tensors/.*True is not of type 'integer'"),
    (lambda m: m["tensors"][next(iter(m["tensors"]))].update(offset=-4), "-4 is less than the minimum of 0"),
    (lambda m: m["experts"]["0_1"].update(shard=m["experts"]["0_0"]["shard"]), "expert 0_1 does not point at its own"),
    (lambda m: m["tokenizer"].update(file="/dev/zero"), "tokenizer/file"),
    (lambda m: m["config"].update(num_layers=10 ** 12), "config/num_layers"),
    (lambda m: m["plan"]["buffers"]["h"].update(shape=["T", 2 ** 40]), "plan/buffers/h/shape"),
    (lambda m: m["shards"].append(m["shards"][0]), "listed twice"),
    (lambda m: m.update(surprise=1), "Additional properties are not allowed"),
    # what the config states, checked against what the plan computes
    (lambda m: m["config"].update(num_layers=99), r"config.num_layers is 99, but the plan has 2 \(attention steps\)"),
    (lambda m: m["config"].update(vocab_size=m["config"]["vocab_size"] + 1), "config.vocab_size is 401, but the plan has 400"),
    (lambda m: m["config"].update(hidden_size=64), "config.hidden_size is 64, but the plan has 48"),
    (lambda m: m["config"].update(num_heads=8), "config.num_heads is 8, but the plan has 4"),
    (lambda m: m["moe"].update(top_k=3), "moe.top_k is 3, but the plan has 2"),
])
def test_sealed_but_malformed_manifests_are_refused(good_pkg, tmp_path, edit, message):
    with pytest.raises(PackageError, match=message):
        Package(sealed_copy(good_pkg, tmp_path, edit))


def test_a_shard_rewritten_after_its_first_read_is_caught(good_pkg, tmp_path):
    import shutil
    pkg = tmp_path / "pkg"
    shutil.copytree(good_pkg, pkg)
    p = Package(pkg)
    first = bytes(p.expert_bytes(0, 1))
    path = pkg / "expert-L000-E001.bin"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    with open(path, "r+b") as f:                     # in place: same inode, same size
        f.write(data)
    p.expert_bytes(1, 2)                             # another shard read in between
    with pytest.raises(PackageError, match="expert-L000-E001.bin is corrupt"):
        p.expert_bytes(0, 1)
    assert first != bytes(data[:len(first)])


def test_a_fifo_in_a_package_is_not_opened(good_pkg, tmp_path):
    import shutil
    pkg = tmp_path / "pkg"
    shutil.copytree(good_pkg, pkg)
    os.unlink(pkg / "manifest.json")
    os.mkfifo(pkg / "manifest.json")
    with pytest.raises(PackageError, match="not a regular file"):
        Package(pkg)


# --- the checkpoint -------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,message", [
    ({"rms_norm_eps": -1}, "rms_norm_eps"),
    ({"rope_theta": -10000}, "rope_theta"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings"),
    ({"partial_rotary_factor": 3.0}, "partial_rotary_factor"),
    ({"num_hidden_layers": 10 ** 9}, "num_hidden_layers"),
    ({"num_hidden_layers": 1}, "num_hidden_layers = 1, but the checkpoint holds layer 1"),
    ({"hidden_size": True}, "hidden_size"),
])
def test_bad_configs_are_refused(good_ckpt, tmp_path, changes, message):
    ckpt = copy_ckpt(good_ckpt, tmp_path / "ckpt")
    edit_config(ckpt, **changes)
    with pytest.raises(ConversionError, match=message):
        convert(ckpt, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_nan_in_a_config_is_refused(good_ckpt, tmp_path):
    ckpt = copy_ckpt(good_ckpt, tmp_path / "ckpt")
    (ckpt / "config.json").write_text((ckpt / "config.json").read_text().replace('"rms_norm_eps": 1e-05',
                                                                                 '"rms_norm_eps": NaN'))
    with pytest.raises(ConversionError, match="NaN is not a JSON number"):
        convert(ckpt, tmp_path / "out", progress=False)


def resave(ckpt, edit):
    tensors = safetensors.numpy.load_file(ckpt / "model.safetensors")
    edit(tensors)
    safetensors.numpy.save_file(tensors, ckpt / "model.safetensors")


def test_nan_weights_are_refused_with_the_tensor_name(good_ckpt, tmp_path):
    ckpt = copy_ckpt(good_ckpt, tmp_path / "ckpt")
    name = "model.layers.1.self_attn.o_proj.weight"
    resave(ckpt, lambda t: t[name].__setitem__((0, 0), np.nan))
    with pytest.raises(ConversionError, match=f"tensor {name} holds NaN"):
        convert(ckpt, tmp_path / "out", progress=False)
    ckpt2 = copy_ckpt(good_ckpt, tmp_path / "ckpt2")
    resave(ckpt2, lambda t: t["model.layers.0.block_sparse_moe.experts.2.w1.weight"].__setitem__((1, 1), np.inf))
    with pytest.raises(ConversionError, match="expert 0_2 gate holds NaN or infinite"):
        convert(ckpt2, tmp_path / "out2", progress=False)


def test_integer_weights_are_refused(good_ckpt, tmp_path):
    ckpt = copy_ckpt(good_ckpt, tmp_path / "ckpt")
    name = "model.layers.0.self_attn.k_proj.weight"
    resave(ckpt, lambda t: t.__setitem__(name, t[name].astype(np.int32)))
    with pytest.raises(ConversionError, match=f"tensor {name} is stored as I32; weights must be floating point"):
        convert(ckpt, tmp_path / "out", progress=False)


def test_the_same_tensor_in_two_files_is_refused(good_ckpt, tmp_path):
    ckpt = copy_ckpt(good_ckpt, tmp_path / "ckpt")
    tensors = safetensors.numpy.load_file(ckpt / "model.safetensors")
    safetensors.numpy.save_file({"model.norm.weight": tensors["model.norm.weight"]}, ckpt / "extra.safetensors")
    with pytest.raises(ConversionError, match="tensor model.norm.weight is in both"):
        convert(ckpt, tmp_path / "out", progress=False)


def test_a_fifo_named_safetensors_does_not_hang(good_ckpt, tmp_path):
    ckpt = copy_ckpt(good_ckpt, tmp_path / "ckpt")
    os.mkfifo(ckpt / "zz.safetensors")
    with pytest.raises(ConversionError, match="zz.safetensors: not a regular file"):
        convert(ckpt, tmp_path / "out", progress=False)


# --- the safetensors reader against the reference library -----------------------------------------------

def write_raw(path, header: dict, data: bytes):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def reference_accepts(path) -> bool:
    try:
        safetensors.numpy.load_file(path)
        return True
    except (SafetensorError, ValueError, TypeError):
        return False


F = lambda begin, end, shape=(2,): {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, end]}  # noqa: E731


@pytest.mark.parametrize("header,data,message", [
    ({"a": F(0, 8), "b": F(4, 12)}, 12, "overlaps"),
    ({"a": F(0, 8), "b": F(0, 8)}, 8, "overlaps"),
    ({"a": F(0, 8), "b": F(12, 20)}, 20, "gap of 4 bytes"),
    ({"a": F(0, 8)}, 12, "4 bytes after the last tensor"),
    ({"a": F(0, 8)}, 4, "truncated"),
    ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, 8, "shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}, 8, "data_offsets"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, 8, "unsupported dtype"),
    ({"a": F(0, 8), "__metadata__": {"k": 5}}, 8, "__metadata__"),
])
def test_reader_refuses_what_the_reference_refuses(tmp_path, header, data, message):
    path = tmp_path / "x.safetensors"
    write_raw(path, header, b"\0" * data)
    assert not reference_accepts(path)
    with pytest.raises(ConversionError, match=message):
        SafetensorsFile(path)


def test_reader_reads_what_the_reference_writes(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"w": rng.standard_normal((3, 5)).astype(np.float32), "h": rng.standard_normal(7).astype(np.float16),
               "e": np.zeros((0, 4), np.float32), "s": np.array(2.5, np.float32)}
    safetensors.numpy.save_file(tensors, tmp_path / "y.safetensors", metadata={"format": "pt"})
    f = SafetensorsFile(tmp_path / "y.safetensors")
    for name, t in tensors.items():
        np.testing.assert_array_equal(f.read(name), t.astype(np.float32))


# --- the API --------------------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body,message", [
    ({"messages": MESSAGES, "seed": -1}, "seed"),
    ({"messages": MESSAGES, "stop": 5}, "stop"),
    ({"messages": MESSAGES, "n": 9}, "at n: 9 is greater than the maximum of 8"),
    ({"messages": MESSAGES, "tools": []}, "'tools' was unexpected"),
    ({"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "strin"}}}}, "response_format: the JSON schema cannot be used: Invalid type: strin"),
    ({"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"enum": []}}}}, "Unsatisfiable schema"),
    ({"messages": MESSAGES, "response_format": {"type": "json_schema"}}, "response_format"),
    ({"messages": MESSAGES, "response_format": {"type": "xml"}}, "response_format"),
    ({"messages": MESSAGES, "presence_penalty": 0.5}, "presence_penalty is not supported"),
    ({"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs needs logprobs: true"),
    ({"messages": MESSAGES, "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "only text content parts are supported"),
    ({"messages": []}, "messages"),
])
def test_bad_requests_name_the_field(body, message):
    with pytest.raises(ApiError) as e:
        parse_chat(json.dumps(body).encode())
    assert message in json.loads(e.value.text)["error"]["message"]


@pytest.mark.parametrize("raw,message", [
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "lone surrogate"),
    (b"[" * 1000 + b"]" * 1000, "nested more than"),
    (b'{"messages": [], "seed": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'{"messages": NaN}', "NaN is not a JSON number"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_hostile_request_bodies_get_a_clear_400(raw, message):
    with pytest.raises(ApiError) as e:
        parse_chat(raw)
    assert e.value.status == 400 and message in json.loads(e.value.text)["error"]["message"]


def test_server_answers_hostile_requests_with_400_and_ranges_safely(good_pkg):
    with serving(create_app([good_pkg])) as url:
        host = url.split("//")[1]
        for raw in [json.dumps({"messages": MESSAGES, "seed": -1}), json.dumps({"messages": MESSAGES, "stop": 5}),
                    '{"messages": [{"role": "user", "content": "\\udc00"}]}', "[" * 1000 + "]" * 1000]:
            c = http.client.HTTPConnection(host, timeout=60)
            c.request("POST", "/v1/chat/completions", body=raw, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            body = json.loads(r.read())
            assert r.status == 400 and body["error"]["message"], raw[:40]
        c = http.client.HTTPConnection(host, timeout=60)
        c.request("GET", f"/models/{good_pkg.name}/manifest.json", headers={"Range": "bytes=" + "9" * 4300 + "-"})
        r = c.getresponse()
        assert r.status == 200 and len(r.read()) == (good_pkg / "manifest.json").stat().st_size
