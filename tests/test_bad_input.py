"""Every bad input gets one clear error, a non-zero exit, and leaves nothing behind."""
import json
import shutil
import struct
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
from transformers import MixtralForCausalLM

from tiny_models import save_checkpoint
from test_mixtral import mixtral
from webmoe.converter.convert import convert
from webmoe import Engine
from webmoe.engine.package import PackageError
from webmoe.engine.tokenizer import PromptError


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    return save_checkpoint(MixtralForCausalLM, mixtral(), tmp_path_factory.mktemp("good") / "ckpt")


@pytest.fixture(scope="module")
def good_pkg(good_ckpt, tmp_path_factory):
    return convert(good_ckpt, tmp_path_factory.mktemp("pkg") / "pkg", dtype="f32", progress=False)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "webmoe", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_config(ckpt, **changes):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def rewrite_safetensors(path, drop=None, reshape=None):
    """Rewrites a safetensors file without `drop`, or with `reshape`'s tensor's declared shape changed."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    if drop:                              # the tensor's bytes go too: the others are laid end to end again
        header.pop(drop)
        meta, body, at = header.pop("__metadata__", None), [], 0
        for e in sorted(header.values(), key=lambda e: e["data_offsets"][0]):
            b, end = e["data_offsets"]
            body.append(data[8 + n + b:8 + n + end])
            e["data_offsets"] = [at, at + end - b]
            at += end - b
        if meta is not None:
            header["__metadata__"] = meta
        data = data[:8 + n] + b"".join(body)
    if reshape:
        name, shape = reshape
        header[name]["shape"] = shape
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data[8 + n:])


def break_missing_config(c): (c / "config.json").unlink()
def break_malformed_config(c): (c / "config.json").write_text("{not json")
def break_config_field(c): edit_config(c, hidden_size=None)
def break_architecture(c): edit_config(c, model_type="mamba9")
def break_no_model_type(c): edit_config(c, model_type=None)
def break_truncated(c): (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:-1000])
def break_header(c): (c / "model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{{{{garbage!!!!!" + b"\0" * 64)
def break_missing_tensor(c): rewrite_safetensors(c / "model.safetensors", drop="model.layers.1.self_attn.o_proj.weight")
def break_missing_expert(c): rewrite_safetensors(c / "model.safetensors",
                                                 drop="model.layers.0.block_sparse_moe.experts.3.w2.weight")
def break_shape(c): edit_config(c, intermediate_size=41)
def break_tensor_shape(c): rewrite_safetensors(c / "model.safetensors",
                                               reshape=("model.layers.0.self_attn.q_proj.weight", [24, 96]))
def break_no_weights(c): (c / "model.safetensors").unlink()
def break_no_tokenizer(c): (c / "tokenizer.json").unlink()
def break_bad_tokenizer(c): (c / "tokenizer.json").write_text("[1, 2")


CASES = {
    "missing config": (break_missing_config, "missing config.json"),
    "malformed config": (break_malformed_config, "config.json is not valid JSON"),
    "config lacks a field": (break_config_field, "lacks 'hidden_size'"),
    "unknown architecture": (break_architecture, "unsupported architecture 'mamba9'; supported: deepseek_v3, "
                             "gpt_oss, kimi_k2, mixtral, olmoe, phimoe, qwen2_moe, qwen3_moe"),
    "no model_type": (break_no_model_type, "no model_type; supported: deepseek_v3, gpt_oss"),
    "truncated safetensors": (break_truncated, "truncated file"),
    "corrupt safetensors header": (break_header, "the safetensors header is not valid JSON"),
    "missing tensor": (break_missing_tensor, "missing tensor model.layers.1.self_attn.o_proj.weight"),
    "missing expert tensor": (break_missing_expert, "missing tensor model.layers.0.block_sparse_moe.experts.3.w2"),
    "config/tensor shape mismatch": (break_shape, "expected [41, 48]"),
    "tensor shape mismatch": (break_tensor_shape, "has shape [24, 96], expected [48, 48]"),
    "no weights": (break_no_weights, "no *.safetensors"),
    "no tokenizer": (break_no_tokenizer, "missing tokenizer.json"),
    "malformed tokenizer": (break_bad_tokenizer, "malformed tokenizer.json"),
}


@pytest.mark.parametrize("case", CASES)
def test_convert_bad_checkpoint(good_ckpt, tmp_path, case):
    breaker, message = CASES[case]
    ckpt = copy_ckpt(good_ckpt, tmp_path / "ckpt")
    breaker(ckpt)
    out = tmp_path / "out" / "pkg"
    r = cli("convert", ckpt, out)
    assert r.returncode == 1
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("webmoe: error: ") and message in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []   # no partial package beside it


def test_convert_refuses_to_overwrite_and_force_replaces_only_a_package(good_ckpt, tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("convert", good_ckpt, out, "--dtype", "f32")
    assert r.returncode == 1 and "already exists" in r.stderr
    r = cli("convert", good_ckpt, out, "--dtype", "f32", "--force")       # not a package: kept
    assert r.returncode == 1 and "not a webmoe package" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    out.rmdir()
    assert cli("convert", good_ckpt, out, "--dtype", "f32").returncode == 0
    (out / "marker").write_text("old package")
    r = cli("convert", good_ckpt, out, "--dtype", "f32", "--force")       # a package: replaced
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.json").is_file() and not (out / "marker").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_force_never_deletes_the_source_or_a_folder_holding_it(good_ckpt, tmp_path):
    models = tmp_path / "models"
    ckpt = copy_ckpt(good_ckpt, models / "ckpt")
    before = sorted(p.name for p in ckpt.iterdir())
    for out in (ckpt, models):
        r = cli("convert", ckpt, out, "--force")
        assert r.returncode == 1 and "is the checkpoint or holds it" in r.stderr, r.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == before


def test_partial_packages_of_killed_conversions_are_removed(good_ckpt, tmp_path):
    dead = tmp_path / ".pkg.partial-999999999"          # no such process
    dead.mkdir()
    (dead / "dense-00000.bin").write_bytes(b"x" * 1000)
    assert cli("convert", good_ckpt, tmp_path / "pkg", "--dtype", "f32").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_failed_convert_keeps_the_previous_package(good_ckpt, tmp_path, good_pkg):
    out = copy_ckpt(good_pkg, tmp_path / "pkg")
    before = (out / "manifest.json").read_bytes()
    ckpt = copy_ckpt(good_ckpt, tmp_path / "ckpt")
    break_truncated(ckpt)
    r = cli("convert", ckpt, out, "--force")
    assert r.returncode == 1
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "pkg"]


def _file_size_limit(limit):
    """For a child process: files may not grow past `limit` bytes, and a write that would is an OSError
    (EFBIG) instead of SIGXFSZ: what a full disk (ENOSPC) looks like to the writer, without filling one."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_is_one_error_line_and_leaves_nothing(good_ckpt, tmp_path):
    out = tmp_path / "out" / "pkg"
    r = subprocess.run([sys.executable, "-m", "webmoe", "convert", str(good_ckpt), str(out), "--dtype", "f32"],
                       capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(20_000))
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("convert ")]   # (progress bar)
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("webmoe: error: writing") and "File too large" in lines[0], r.stderr
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_a_config_without_architectures_converts_to_a_package_that_loads(good_ckpt, tmp_path):
    """config.json files written by hand often lack `architectures` (issue 23: such a conversion wrote a
    manifest its own loader refused, after eight minutes)."""
    ckpt = copy_ckpt(good_ckpt, tmp_path / "ckpt")
    edit_config(ckpt, architectures=None)
    pkg = convert(ckpt, tmp_path / "pkg", dtype="f32", progress=False)
    assert json.loads((pkg / "manifest.json").read_text())["architecture"] is None
    assert len(Engine.load(pkg).logits([1, 2, 3])) == 3


def test_the_converter_never_writes_a_manifest_its_loader_refuses(tmp_path):
    from webmoe.converter.errors import ConversionError
    from webmoe.converter.writer import PackageWriter
    writer = PackageWriter(tmp_path / "out" / "pkg")
    with pytest.raises(ConversionError, match="would not load, so nothing was written.*malformed manifest.json"):
        writer.finish({"family": "mixtral"})
    writer.abort()
    assert list((tmp_path / "out").iterdir()) == []


def test_package_layout(good_pkg):
    m = json.loads((good_pkg / "manifest.json").read_text())
    assert m["format"] == "rdrr" and m["format_version"] == 8
    E, L = 5, 2
    assert sorted(m["experts"]) == sorted(f"{l}_{e}" for l in range(L) for e in range(E))
    shards = {s["file"]: s for s in m["shards"]}
    import hashlib
    for s in shards.values():
        data = (good_pkg / s["file"]).read_bytes()
        assert len(data) == s["size"] and hashlib.sha256(data).hexdigest() == s["sha256"]
    for key, e in m["experts"].items():   # one shard per (layer, expert), holding that expert alone
        assert shards[e["shard"]]["kind"] == "expert" and shards[e["shard"]]["expert"] == key
    for t in m["tensors"].values():
        assert t["offset"] % 256 == 0


def corrupt(pkg, tmp_path, how):
    bad = copy_ckpt(pkg, tmp_path / "bad")
    how(bad)
    return bad


def flip_expert_byte(p):
    f = p / "expert-L001-E002.bin"
    b = bytearray(f.read_bytes())
    b[100] ^= 0xFF
    f.write_bytes(bytes(b))


@pytest.mark.parametrize("how,message", [
    (lambda p: (p / "manifest.json").write_text("{"), "manifest.json is not valid JSON"),
    (lambda p: (p / "manifest.json").write_text(json.dumps({"format": "rdrr"})), "malformed manifest.json"),
    (lambda p: (p / "manifest.json").unlink(), "manifest.json not found"),
    (lambda p: (p / "dense-00000.bin").write_bytes(b"short"), "truncated or corrupt"),
    (lambda p: (p / "expert-L000-E001.bin").unlink(), "is missing"),
    (flip_expert_byte, "expert-L001-E002.bin is corrupt (sha256 mismatch)"),
])
def test_engine_rejects_bad_packages(good_pkg, tmp_path, how, message):
    bad = corrupt(good_pkg, tmp_path, how)
    with pytest.raises(PackageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Engine.load(bad)
    r = cli("run", bad, "--prompt", "hi")
    assert r.returncode == 1 and "webmoe: error:" in r.stderr and "Traceback" not in r.stderr


def test_engine_rejects_bad_prompts(good_pkg):
    engine = Engine.load(good_pkg)
    for bad in ([], [1, 400], [-1], [[1, 2]], "x" * 0, None, [{"role": "user"}]):
        with pytest.raises(PromptError):
            if isinstance(bad, list) and bad and isinstance(bad[0], (int, list)):
                engine.logits(bad)
            else:
                list(engine.generate(bad, max_new_tokens=1))
    with pytest.raises(PromptError, match="maximum sequence length"):
        engine.logits(np.ones(engine.max_seq_len + 1, int))
    for kwargs in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": -2}):
        with pytest.raises(PromptError):
            list(engine.generate("Beautiful", **kwargs))
    assert len(engine.logits([5, 6])) == 2      # still usable afterwards


def test_cli_run_with_a_json_schema(good_pkg, tmp_path):
    """`webmoe run --json-schema FILE` prints JSON that matches the schema; a schema that is missing, not
    an object or not usable is one error line before the model loads."""
    schema = {"type": "object", "additionalProperties": False, "required": ["act"],
              "properties": {"act": {"type": "integer", "minimum": 1, "maximum": 5}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    r = cli("run", good_pkg, "--prompt", "Simple is better", "--json-schema", str(tmp_path / "s.json"),
            "--temperature", "0.9", "--seed", "4")
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), schema)
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "bad.json").write_text('{"type": "strin"}')
    for name, message in (("nope.json", "No such file or directory"), ("list.json", "a JSON schema is an object"),
                          ("bad.json", "the JSON schema cannot be used: Invalid type: strin")):
        r = cli("run", good_pkg, "--prompt", "x", "--json-schema", str(tmp_path / name))
        assert r.returncode == 1 and r.stderr.strip().splitlines() == ["webmoe: error: " + (
            f"--json-schema {tmp_path / name}: " if name != "bad.json" else "") + message]


def test_cli_run_and_info(good_pkg):
    r = cli("run", good_pkg, "--prompt", "Simple is better", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    assert "mixtral on" in r.stderr
    r = cli("info", good_pkg)
    assert r.returncode == 0, r.stderr
    info = dict((line[:22].strip(), line[22:]) for line in r.stdout.splitlines())
    assert info["family"].startswith("mixtral")
    assert info["experts"].startswith("5 per layer, top-2")
    assert info["router"] == "softmax, renormalised" and info["shared experts"] == "none"
    assert info["layers"] == "2 (2 MoE; dense: none)"
    # 2 layers x 5 experts x 3 x 40 x 48 expert params, plus dense (embed, lm_head, attention, norms, routers)
    dense = 2 * 400 * 48 + 48 + 2 * (2 * 48 + 48 * 48 * 2 + 24 * 48 * 2 + 5 * 48)
    assert info["total parameters"].endswith(f"({dense + 2 * 5 * 3 * 40 * 48:,})")
    assert info["active parameters"].startswith(f"{(dense + 2 * 2 * 3 * 40 * 48) / 1e3:.2f}K")
    assert info["shards"] == "13 (10 expert)"      # and 2 tokenizer files


@pytest.mark.parametrize("mirror", ["ftp://example.org/pkg/", "example.org/pkg", "https://a b/", "https://x/" + "y" * 2048])
def test_bad_mirror_is_refused(good_ckpt, tmp_path, mirror):
    r = cli("convert", good_ckpt, tmp_path / "pkg", "--mirror", mirror)
    assert r.returncode == 1 and r.stderr.startswith("webmoe: error: --mirror takes up to 16 distinct http(s) URLs")
    assert not (tmp_path / "pkg").exists()


def test_mirrors_are_written_as_folders(good_ckpt, tmp_path):
    """--mirror URLs land in the manifest as base folders (a trailing slash), where the browser looks for
    each shard by name; the native engine loads the package as before."""
    r = cli("convert", good_ckpt, tmp_path / "pkg", "--mirror", "https://cdn.example.org/m",
            "--mirror", "http://127.0.0.1:9/pkg/")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert m["mirrors"] == ["https://cdn.example.org/m/", "http://127.0.0.1:9/pkg/"]
    Engine.load(tmp_path / "pkg")
