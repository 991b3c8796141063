"""The `webmoe` command: convert, run, info, serve, bench, speed, perplexity, analyze."""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import webmoe
from webmoe.format.plan_variants import ADAPTER_CLASSES
from webmoe.format.weight_formats import FORMATS
from webmoe.converter.weight_dtypes import PRESETS


class MissingExtra(RuntimeError):
    pass


class UsageError(RuntimeError):
    """A command's input that is not usable (a missing file, a text too short): one line, no traceback."""


def _require(module: str, extra: str, what: str) -> None:
    """Fails before any work is done when an optional dependency is not installed."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{what} needs {module}, which is not installed: pip install 'webmoe[{extra}]'")


def _mib(value: float | None) -> int | None:
    return None if value is None else int(value * 2**20)


def _convert(args) -> int:
    from webmoe.converter.convert import convert
    from webmoe.converter.weight_dtypes import PARTS
    stats: dict = {}
    parts = {part: getattr(args, f"{part}_dtype") for part in PARTS}
    out = convert(args.src, args.out, dtype=args.dtype, force=args.force, max_binding=args.max_binding, stats=stats,
                  part_dtypes=parts, mirrors=tuple(args.mirror), revision=args.revision)
    secs = max(stats["seconds"], 1e-9)
    print(f"wrote {out}: read {stats['bytes_read'] / 1e9:.2f} GB, wrote {stats['bytes_written'] / 1e9:.2f} GB in "
          f"{secs:.1f} s ({stats['bytes_read'] / 1e9 / secs:.2f} GB/s read, {stats['bytes_written'] / 1e9 / secs:.2f} GB/s "
          "written)", file=sys.stderr)
    return 0


def _run(args) -> int:
    from webmoe import Engine, EngineOptions
    grammar = _grammar(args)                  # a bad schema stops before the model loads
    engine = Engine.load(args.package, EngineOptions(adapter=args.adapter, max_seq_len=args.max_seq_len,
                                                     expert_cache_bytes=_mib(args.expert_cache_mb), routing=args.routing))
    print(f"webmoe: {engine.describe()}", file=sys.stderr)
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    for token in engine.generate(prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, seed=args.seed, stop=args.stop, grammar=grammar):
        sys.stdout.write(token.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _grammar(args) -> str | None:
    """--json (any JSON object) or --json-schema FILE as a constrained-decoding grammar, else None."""
    if not (args.json or args.json_schema):
        return None
    from webmoe.engine.constraint import json_grammar
    from webmoe.format.strict_json import parse_json
    schema = None
    if args.json_schema:
        try:
            raw = Path(args.json_schema).read_bytes()
        except OSError as e:
            raise UsageError(f"--json-schema {args.json_schema}: {e.strerror}") from None
        schema = parse_json(raw, f"--json-schema {args.json_schema}", UsageError, 16 << 20)
        if not isinstance(schema, dict):
            raise UsageError(f"--json-schema {args.json_schema}: a JSON schema is an object")
    return json_grammar(schema)


def _serve(args) -> int:
    from webmoe.serve.server import serve
    serve(args.package, serve_options(args), host=args.host, port=args.port)
    return 0


def serve_options(args):
    """`webmoe serve`'s flags (and WEBMOE_API_KEYS, WEBMOE_ADMIN_KEYS) as the server's ServeOptions."""
    import os
    from webmoe.engine.options import EngineOptions
    from webmoe.serve.options import ServeOptions
    # keys from the environment keep them out of the process list
    keys = tuple(args.api_key or ()) + tuple(k for k in os.environ.get("WEBMOE_API_KEYS", "").split(",") if k)
    from webmoe.serve.routes import parse_route
    admin = tuple(args.admin_key or ()) + tuple(k for k in os.environ.get("WEBMOE_ADMIN_KEYS", "").split(",") if k)
    try:
        routes = [parse_route(spec, error_rate=args.rollback_error_rate, p95_s=args.rollback_p95_s,
                              min_requests=args.rollback_min_requests) for spec in args.route or ()]
    except ValueError as e:
        raise UsageError(str(e)) from None
    routing = dict(spec.partition("=")[::2] for spec in args.routing or ())
    return ServeOptions(
        engine=EngineOptions(adapter=args.adapter, expert_cache_bytes=_mib(args.expert_cache_mb),
                             max_batch=args.max_batch),
        api=not args.no_api, api_keys=keys, cors_origins=tuple(args.cors_origin or ()), admin_keys=admin,
        admission={"max_waiting": args.max_waiting, "max_wait_s": args.max_wait},
        memory_budget=_mib(args.memory_budget_mb), routes=tuple(routes), pin_hot_share=args.pin_hot_experts,
        routing=routing, package_roots=None if args.package_root is None else tuple(Path(r) for r in args.package_root))


def _bench(args) -> int:
    if args.png:
        _require("matplotlib", "plots", "webmoe bench --png")
    if args.browser:
        _require("playwright", "browser", "webmoe bench --browser")
    from webmoe.tools.bench import bench, save_png, table
    if args.browser:
        from webmoe.tools.bench_browser import bench_browser
        rows = bench_browser(args.package, tokens=args.tokens, repeats=args.repeats)
    else:
        rows = bench(args.package, tokens=args.tokens, adapter=args.adapter, repeats=args.repeats)
    where = "Chromium, " + rows[0]["adapter"] if args.browser else rows[0]["adapter"]
    from webmoe.engine.package import Package
    formats = Package(args.package).manifest["dtypes"]
    print(f"{args.package} (experts {formats['experts']}, attention {formats['attention']}) on {where}: "
          f"{args.tokens} greedy decode tokens after a 32-token prompt, median of {args.repeats} rounds after a warm-up")
    print(table(rows))
    if args.png:
        save_png(rows, args.png, f"{args.package} on {where}")
        print(f"wrote {args.png}")
    return 0


def _speed(args) -> int:
    import json
    from webmoe.tools.speed import measure, table
    if args.browser:
        from webmoe.tools.bench_browser import speed_browser
        r = speed_browser(args.package, prompt=args.prompt, tokens=args.tokens, repeats=args.repeats,
                          profile=args.profile, adapter_class=args.adapter_class)
    else:
        r = measure(args.package, prompt=args.prompt, tokens=args.tokens, repeats=args.repeats, adapter=args.adapter,
                    profile=args.profile, adapter_class=args.adapter_class)
    print(table(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


def _perplexity(args) -> int:
    from webmoe import Engine
    from webmoe.tools.perplexity import perplexity
    try:
        text = Path(args.text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--text {args.text}: {e}") from None
    for pkg in args.package:
        try:
            r = perplexity(Engine.load(pkg, adapter=args.adapter), text, window=args.window,
                           max_tokens=args.max_tokens)
        except ValueError as e:
            raise UsageError(f"--text {args.text}: {e}") from None
        print(f"{pkg}: perplexity {r['perplexity']:.4f} over {r['tokens']} tokens ({r['windows']} windows of "
              f"{args.window})")
    return 0


def _analyze(args) -> int:
    from pathlib import Path
    _require("matplotlib", "plots", "webmoe analyze")
    from webmoe.tools.analyze import analyze, write
    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += [line for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        print("webmoe: error: give --prompt or --prompts FILE", file=sys.stderr)
        return 1
    report = analyze(args.package, prompts, args.max_new_tokens, args.adapter)
    for path in write(report, Path(args.out)):
        print(f"wrote {path}")
    if args.into_package:
        from webmoe.tools.analyze import into_package
        digest = into_package(report, args.package)
        print(f"wrote routing_stats into {Path(args.package) / 'manifest.json'} (its sha256 is now {digest})")
    return 0


def _default_budget(package) -> str:
    """How the engine would choose its expert budget on this machine (engine/memory.py)."""
    from webmoe.engine.device import is_cpu, pick_adapter
    from webmoe.engine.errors import DeviceError
    from webmoe.engine.memory import package_budget
    try:
        cpu = is_cpu(pick_adapter())
    except DeviceError as e:
        return f"no WebGPU adapter here ({e})"
    S = min(4096, package.config["max_position_embeddings"])     # Engine.load's defaults
    return package_budget(package.manifest["plan"], cpu, 64, S).reason


def _info(args) -> int:
    from webmoe.engine.package import Package
    from webmoe.tools.summary import summarize
    package = Package(args.package)
    for key, value in summarize(package).items():
        print(f"{key:<22}{value}")
    print(f"{'expert budget':<22}{_default_budget(package)}")
    if args.plan:
        from webmoe.tools.plan_view import describe_plan
        print()
        print("\n".join(describe_plan(package.manifest)))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webmoe", description="Mixture-of-Experts models on WebGPU")
    p.add_argument("--version", action="version", version=f"webmoe {webmoe.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="Hugging Face checkpoint directory -> RDRR package")
    c.add_argument("src", help="directory with config.json, *.safetensors and tokenizer.json, or a Hugging Face Hub "
                               "repository holding them (ORG/REPO or hf://ORG/REPO[@REVISION]; HF_HOME, "
                               "HF_ENDPOINT and HF_HUB_OFFLINE apply)")
    c.add_argument("out", help="package directory to write (written atomically)")
    c.add_argument("--dtype", choices=list(PRESETS), default="f16",
                   help="weight format preset: f32, f16, q8 (8-bit blocks), q4 (4-bit experts and feed-forward "
                        "layers, 8-bit attention, embedding and head); norms, biases and routers stay f32")
    for part, what in (("experts", "routed experts (default for MXFP4 checkpoints: kept in mxfp4)"),
                       ("ffn", "dense feed-forward layers and shared experts"), ("attention", "attention projections"),
                       ("embed", "the token embedding (and the LM head when tied)"), ("head", "an untied LM head")):
        c.add_argument(f"--{part}-dtype", choices=list(FORMATS), default=None, help=f"format of {what}")
    c.add_argument("--revision", default=None, help="with a Hub repository: the branch, tag or commit (default main)")
    c.add_argument("--force", action="store_true",
                   help="replace OUT if it is a webmoe package (never the checkpoint or a folder holding it)")
    c.add_argument("--max-binding", type=int, default=128 << 20, metavar="BYTES",
                   help="cut tensors and experts so that no GPU binding exceeds BYTES (default 128 MiB, which "
                        "every WebGPU adapter grants)")
    c.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="a base URL that also serves the package's files (repeatable): the browser fetches a "
                        "shard from the next one when one fails, and checks every shard's sha256")
    c.set_defaults(func=_convert)

    r = sub.add_parser("run", help="generate text from a prompt, streamed to stdout")
    r.add_argument("package")
    r.add_argument("--prompt", required=True)
    r.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    r.add_argument("--max-new-tokens", type=int, default=128)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    r.add_argument("--json", action="store_true", help="the answer is a JSON object (constrained decoding)")
    r.add_argument("--json-schema", metavar="FILE", help="the answer is JSON matching this JSON schema")
    r.add_argument("--max-seq-len", type=int, default=None)
    r.add_argument("--adapter", default=None, help="adapter name substring, e.g. llvmpipe, nvidia")
    r.add_argument("--expert-cache-mb", type=float, default=None,
                   help="GPU memory for routed experts (default: all experts, as the adapter allows)")
    r.add_argument("--routing", default="model", help="model (the trained routing), or for experiments top1, hash or "
                   "capacity:FACTOR, which change the model's output")
    r.set_defaults(func=_run)

    s = sub.add_parser("serve", help="serve the chat app, the kernels and packages over HTTP")
    s.add_argument("package", nargs="+")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--no-api", action="store_true", help="serve files only, no OpenAI-compatible /v1 API")
    s.add_argument("--adapter", default=None, help="adapter for the /v1 API's native engine")
    s.add_argument("--expert-cache-mb", type=float, default=None, help="GPU memory for the API engine's experts")
    s.add_argument("--api-key", action="append", help="a key the /v1 API asks for as `Authorization: Bearer KEY` "
                   "(repeatable; also WEBMOE_API_KEYS=k1,k2); without any, the API is open")
    s.add_argument("--cors-origin", action="append", help="an origin whose pages may call the /v1 API (repeatable; "
                   "* for any)")
    s.add_argument("--max-batch", type=int, default=8,
                   help="sequences a model decodes together (continuous batching; each holds its own KV cache)")
    s.add_argument("--pin-hot-experts", type=float, default=0.0, metavar="SHARE",
                   help="hold in host memory (mlock where permitted) each layer's most-used experts covering this "
                        "share of its tokens, from the package's routing statistics (webmoe analyze --into-package)")
    s.add_argument("--routing", action="append", metavar="MODEL=STRATEGY",
                   help="run another routing rule than the model's trained one, for experiments: top1, hash or "
                        "capacity:FACTOR (changes the model's output; /v1/models says so) (repeatable)")
    s.add_argument("--max-waiting", type=int, default=64,
                   help="requests that may wait for a busy model; more get 429 (default 64)")
    s.add_argument("--max-wait", type=float, default=120.0,
                   help="seconds a request may wait for a busy model before a 503 (default 120)")
    s.add_argument("--admin-key", action="append", help="a key for PUT /admin/models/NAME {\"path\": PACKAGE}, "
                   "the hot swap (repeatable; also WEBMOE_ADMIN_KEYS); without any, there is no /admin")
    s.add_argument("--package-root", action="append", help="a folder whose packages a hot swap may serve "
                   "(repeatable; default: the folders holding the served packages); other paths are refused")
    s.add_argument("--memory-budget-mb", type=float, default=None,
                   help="package bytes whose engines may stay loaded at once; idle ones are unloaded beyond it")
    s.add_argument("--route", action="append", help="an A/B route NAME=MODEL:WEIGHT,MODEL:WEIGHT (the first arm is "
                   "the control); clients ask for NAME as their model (repeatable)")
    s.add_argument("--rollback-error-rate", type=float, default=None,
                   help="a route's arm whose error rate exceeds this gives its traffic back to the control")
    s.add_argument("--rollback-p95-s", type=float, default=None,
                   help="... or whose 95th-percentile latency exceeds this many seconds")
    s.add_argument("--rollback-min-requests", type=int, default=20, help="requests an arm needs before it is judged")
    s.set_defaults(func=_serve)

    b = sub.add_parser("bench", help="decode speed and expert-cache hit rate under several expert budgets")
    b.add_argument("package")
    b.add_argument("--tokens", type=int, default=64)
    b.add_argument("--repeats", type=int, default=3, help="rounds over the budgets, after a warm-up (median, spread)")
    b.add_argument("--png", default=None, help="also save a chart here")
    b.add_argument("--adapter", default=None)
    b.add_argument("--browser", action="store_true", help="measure in headless Chromium (WebGPU) instead")
    b.set_defaults(func=_bench)

    v = sub.add_parser("speed", help="prefill and decode tokens/s, bytes read per token and the share of the "
                                     "adapter's measured bandwidth; --profile: GPU time per kernel")
    v.add_argument("package")
    v.add_argument("--prompt", type=int, default=128, help="prefill tokens")
    v.add_argument("--tokens", type=int, default=32, help="decoded tokens per repetition")
    v.add_argument("--repeats", type=int, default=3)
    v.add_argument("--profile", action="store_true", help="also time every dispatch with timestamp queries")
    v.add_argument("--json", default=None, help="also write the figures to this file")
    v.add_argument("--adapter", default=None)
    v.add_argument("--browser", action="store_true", help="measure in headless Chromium (WebGPU) instead")
    v.add_argument("--adapter-class", choices=ADAPTER_CLASSES, default=None,
                   help="run the plan's steps for this class of adapter (default: the adapter's own)")
    v.set_defaults(func=_speed)

    q = sub.add_parser("perplexity", help="perplexity of packages on a text (how weight formats compare)")
    q.add_argument("package", nargs="+")
    q.add_argument("--text", required=True, help="a UTF-8 text file the model was not trained on")
    q.add_argument("--window", type=int, default=256, help="tokens per forward pass (each from an empty cache)")
    q.add_argument("--max-tokens", type=int, default=None)
    q.add_argument("--adapter", default=None)
    q.set_defaults(func=_perplexity)

    a = sub.add_parser("analyze", help="per-layer expert usage and co-activation over prompts: JSON + heatmap")
    a.add_argument("package")
    a.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    a.add_argument("--prompts", help="a text file with one prompt per line")
    a.add_argument("--max-new-tokens", type=int, default=32)
    a.add_argument("--out", default="out/analysis")
    a.add_argument("--adapter", default=None)
    a.add_argument("--into-package", action="store_true",
                   help="also write the expert usage into the package's manifest (routing_stats), for browser loads "
                        "that download the most-used experts first (hotExperts)")
    a.set_defaults(func=_analyze)

    i = sub.add_parser("info", help="describe a package")
    i.add_argument("package")
    i.add_argument("--plan", action="store_true", help="also list the forward pass step by step")
    i.set_defaults(func=_info)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from webmoe.converter.errors import ConversionError
    from webmoe.engine.errors import USER_ERRORS
    try:
        return args.func(args)
    except (ConversionError, MissingExtra, UsageError, *USER_ERRORS) as e:
        print(f"webmoe: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:          # e.g. `webmoe info --plan | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:             # the system refused (a full disk, a permission): one line, no traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"webmoe: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
