"""Generating does not grow the process: resident memory after 2,000 tokens (free and under a grammar)
stays within a small bound of what it was once every setting had run (the one-kernel sampler once leaked
345 KiB per token in lavapipe, shaders/README.md)."""
from pathlib import Path

from webmoe import Engine
from webmoe.engine.constraint import json_grammar

DEMO = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"
# the last decodes under a grammar: its masks are written to the GPU and sample_mask runs every token
SETTINGS = [dict(temperature=0.0), dict(temperature=0.8, top_p=0.9, seed=1), dict(temperature=1.0, seed=2),
            dict(temperature=0.8, seed=3, grammar=json_grammar({"type": "array", "items": {"type": "string"},
                                                                 "minItems": 500}))]
BOUND_KIB = 8 << 10     # the old leak would have added 600 MiB between the two marks
FIRST = 100 * len(SETTINGS)   # the first mark: every setting has run once (the grammar's first use builds
                              # llguidance's view of the vocabulary, 4 MiB, once)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def test_resident_memory_does_not_grow_per_token():
    engine = Engine.load(DEMO, max_seq_len=256)
    marks, made, turn = {}, 0, 0
    while made < 2000:
        settings = SETTINGS[turn % len(SETTINGS)]
        turn += 1
        for _ in engine.generate("KING HENRY.\n", max_new_tokens=100, stop=None, **settings):
            made += 1
            if made in (FIRST, 2000):
                marks[made] = rss_kib()
    grown = marks[2000] - marks[FIRST]
    print(f"RSS after {FIRST} tokens {marks[FIRST] / 1024:.1f} MiB, after 2000 {marks[2000] / 1024:.1f} MiB: "
          f"{grown / (2000 - FIRST):.2f} KiB per token")
    assert grown < BOUND_KIB, f"resident memory grew {grown} KiB over {2000 - FIRST} tokens"
