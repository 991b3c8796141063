"""Every `webmoe` command and flag the README shows, run as a user runs it (webmoe.cli.main with the same
arguments) and checked against what the library gives for the same request: `run` with each of its flags,
`info --plan`, `bench --png`, `perplexity`, `analyze` (and --into-package), `convert`'s per-part formats and
--max-binding, and `serve`'s flags as the options the server gets (the server itself is tested end to end
in test_openai_client.py and test_wheel.py). The commands' error paths are in test_bad_input.py."""
import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from webmoe import Engine
from webmoe.cli import main, parser, serve_options
from webmoe.engine.constraint import json_grammar
from webmoe.serve.routes import Route

DEMO = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"
PROMPT = "ROMEO. But soft, what light"
ASK = "Who is Romeo? Answer in JSON."
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"],
          "additionalProperties": False}


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def text(engine, prompt=PROMPT, **kw) -> str:
    return "".join(t.text for t in engine.generate(prompt, **kw))


@pytest.fixture(scope="module")
def engine():
    return Engine.load(DEMO)


@pytest.mark.parametrize("flags,settings", [
    ([], dict(max_new_tokens=128)),
    (["--max-new-tokens", 20], dict(max_new_tokens=20)),
    (["--max-new-tokens", 24, "--temperature", 0.8, "--top-p", 0.9, "--seed", 3],
     dict(max_new_tokens=24, temperature=0.8, top_p=0.9, seed=3)),
    (["--max-new-tokens", 40, "--stop", "e", "--stop", "\n"], dict(max_new_tokens=40, stop=["e", "\n"])),
], ids=["defaults", "max-new-tokens", "sampling", "stop"])
def test_run_prints_what_the_engine_generates(capsys, engine, flags, settings):
    code, out, err = cli(capsys, "run", DEMO, "--prompt", PROMPT, *flags)
    assert code == 0 and err.startswith("webmoe: ")
    assert out == text(engine, **settings) + "\n"


def test_run_chat_json_and_json_schema(capsys, engine, tmp_path):
    messages = [{"role": "user", "content": PROMPT}]
    code, out, _ = cli(capsys, "run", DEMO, "--prompt", PROMPT, "--chat", "--max-new-tokens", 16)
    assert code == 0 and out == text(engine, messages, max_new_tokens=16) + "\n"
    ask = [{"role": "user", "content": ASK}]          # a question the demo model answers in a short JSON
    code, out, _ = cli(capsys, "run", DEMO, "--prompt", ASK, "--chat", "--json", "--max-new-tokens", 120)
    assert code == 0 and out == text(engine, ask, max_new_tokens=120, grammar=json_grammar(None)) + "\n"
    assert isinstance(json.loads(out), dict)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    code, out, _ = cli(capsys, "run", DEMO, "--prompt", ASK, "--chat", "--json-schema", schema, "--max-new-tokens", 120)
    assert code == 0 and out == text(engine, ask, max_new_tokens=120, grammar=json_grammar(SCHEMA)) + "\n"
    jsonschema.validate(json.loads(out), SCHEMA)


def test_run_engine_flags(capsys, engine):
    """--max-seq-len bounds the answer by the KV cache; --expert-cache-mb pages the experts (same text);
    --routing swaps the router's rule; --adapter picks the adapter by name, and an unknown one is an error."""
    prompt_len = len(engine.tokenizer.prompt_ids(PROMPT))
    code, out, _ = cli(capsys, "run", DEMO, "--prompt", PROMPT, "--max-seq-len", prompt_len + 4,
                       "--max-new-tokens", 50)
    assert code == 0 and out == text(Engine.load(DEMO, max_seq_len=prompt_len + 4), max_new_tokens=50) + "\n"
    assert len(Engine.load(DEMO).tokenizer.encode(out.strip(), add_special_tokens=False)) <= 5 + 2
    code, out, err = cli(capsys, "run", DEMO, "--prompt", PROMPT, "--expert-cache-mb", 2, "--max-new-tokens", 16)
    assert code == 0 and out == text(engine, max_new_tokens=16) + "\n" and "the rest paged" in err
    code, out, err = cli(capsys, "run", DEMO, "--prompt", PROMPT, "--expert-cache-mb", 0.2)
    assert code == 1 and err == "webmoe: error: an expert cache of 0.20 MiB holds no expert; one expert needs 0.35 MiB\n"
    code, out, _ = cli(capsys, "run", DEMO, "--prompt", PROMPT, "--routing", "top1", "--max-new-tokens", 16)
    assert code == 0 and out == text(Engine.load(DEMO, routing="top1"), max_new_tokens=16) + "\n"
    adapter = engine.adapter.split()[0]
    code, out, err = cli(capsys, "run", DEMO, "--prompt", PROMPT, "--adapter", adapter, "--max-new-tokens", 8)
    assert code == 0 and adapter in err
    code, out, err = cli(capsys, "run", DEMO, "--prompt", PROMPT, "--adapter", "no-such-gpu")
    assert code == 1 and err.startswith("webmoe: error:") and "no-such-gpu" in err and out == ""


def test_info_lists_the_plan_step_by_step(capsys):
    code, out, _ = cli(capsys, "info", DEMO, "--plan")
    manifest = json.loads((DEMO / "manifest.json").read_text())
    assert code == 0
    for step in manifest["plan"]["steps"]:
        assert step["label"] in out
    code, short, _ = cli(capsys, "info", DEMO)
    assert code == 0 and len(short.splitlines()) < len(out.splitlines()) - len(manifest["plan"]["steps"])


def test_bench_prints_its_budgets_and_draws_them(capsys, tmp_path):
    png = tmp_path / "bench.png"
    code, out, _ = cli(capsys, "bench", DEMO, "--tokens", 4, "--repeats", 1, "--png", png)
    assert code == 0 and out.splitlines()[-1] == f"wrote {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from webmoe.tools.bench import RUNS, budgets
    labels = [label for label, _, _ in budgets(DEMO, RUNS)[2]]       # a row per budget, in order
    assert [line[:16].strip() for line in out.splitlines()[3:3 + len(labels)]] == labels, out


def test_perplexity_prints_each_package(capsys, tmp_path):
    from webmoe.tools.perplexity import perplexity
    corpus = tmp_path / "text.txt"
    corpus.write_text((DEMO.parent / "routing-prompts.txt").read_text() * 3)
    code, out, _ = cli(capsys, "perplexity", DEMO, DEMO, "--text", corpus, "--window", 64, "--max-tokens", 200)
    want = perplexity(Engine.load(DEMO), corpus.read_text(), window=64, max_tokens=200)
    line = f"{DEMO}: perplexity {want['perplexity']:.4f} over {want['tokens']} tokens ({want['windows']} windows of 64)"
    assert code == 0 and out.splitlines() == [line, line]


def test_analyze_writes_usage_and_seals_it_into_a_copy(capsys, tmp_path):
    pkg = shutil.copytree(DEMO, tmp_path / "pkg")
    before = json.loads((pkg / "manifest.json").read_text())["manifest_sha256"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("JULIET. Good night\n\nROMEO. Farewell\n")
    code, out, _ = cli(capsys, "analyze", pkg, "--prompt", PROMPT, "--prompts", prompts, "--max-new-tokens", 6,
                       "--out", tmp_path / "analysis", "--into-package")
    assert code == 0
    report = json.loads((tmp_path / "analysis" / "routing.json").read_text())
    assert report["prompts"] == 3
    for layer in report["layers"].values():          # every routed token chose top_k experts
        assert sum(layer["usage"]) == report["tokens"] * report["top_k"]
    assert (tmp_path / "analysis" / "routing.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["manifest_sha256"] != before and "routing_stats" in manifest
    assert out.splitlines()[-1].endswith(f"(its sha256 is now {manifest['manifest_sha256']})")
    Engine.load(pkg)                                # still a valid package
    assert json.loads((DEMO / "manifest.json").read_text())["manifest_sha256"] == before


def test_convert_part_formats_and_binding_limit(capsys, tmp_path):
    from test_mixtral import CONFIGS
    from tiny_models import save_checkpoint
    from transformers import MixtralForCausalLM
    ckpt = save_checkpoint(MixtralForCausalLM, CONFIGS["gqa-top2"], tmp_path / "ckpt")
    code, _, err = cli(capsys, "convert", ckpt, tmp_path / "pkg", "--dtype", "q8", "--experts-dtype", "q4",
                       "--attention-dtype", "f16", "--max-binding", 8192)
    assert code == 0 and err.splitlines()[-1].startswith(f"wrote {tmp_path / 'pkg'}: read ")
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert manifest["dtypes"]["experts"] == "q4" and manifest["dtypes"]["attention"] == "f16"
    assert manifest["dtypes"]["embed"] == "q8"
    assert all(t["size"] <= 8192 for t in manifest["tensors"].values())
    assert any(".part" in name for name in manifest["tensors"])        # 8 KiB cut the embeddings
    Engine.load(tmp_path / "pkg", max_binding=8192, chunk_tokens=2, max_seq_len=24).logits([3, 4, 5])


def test_serve_flags_become_the_servers_options(monkeypatch):
    monkeypatch.setenv("WEBMOE_API_KEYS", "env-key-1,env-key-2")
    monkeypatch.setenv("WEBMOE_ADMIN_KEYS", "")
    args = parser().parse_args([
        "serve", str(DEMO), "--api-key", "flag-key", "--cors-origin", "https://app.example",
        "--route", "chat=shakespeare-moe:0.9,other:0.1", "--rollback-error-rate", "0.2", "--rollback-p95-s", "3",
        "--rollback-min-requests", "7", "--routing", "other=top1", "--pin-hot-experts", "0.5", "--max-batch", "4",
        "--expert-cache-mb", "2", "--max-waiting", "5", "--max-wait", "9", "--memory-budget-mb", "64",
        "--package-root", "/srv/models"])
    o = serve_options(args)
    assert o.api_keys == ("flag-key", "env-key-1", "env-key-2") and o.cors_origins == ("https://app.example",)
    [route] = o.routes
    assert isinstance(route, Route) and route.name == "chat"
    assert [(a.model, a.weight) for a in route.arms] == [("shakespeare-moe", 0.9), ("other", 0.1)]
    assert (route.error_rate, route.p95_s, route.min_requests) == (0.2, 3.0, 7)
    assert o.routing == {"other": "top1"} and o.pin_hot_share == 0.5
    assert o.engine.max_batch == 4 and o.engine.expert_cache_bytes == 2 << 20
    assert o.admission == {"max_waiting": 5, "max_wait_s": 9.0} and o.memory_budget == 64 << 20
    assert o.package_roots == (Path("/srv/models"),) and o.api and o.admin_keys == ()
    assert serve_options(parser().parse_args(["serve", str(DEMO), "--no-api"])).api is False
