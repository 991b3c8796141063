"""The committed demo model: a valid package that writes recognisable English."""
import re
from pathlib import Path

from webmoe import Engine

DEMO = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"
# frequent English words; random or broken weights produce almost none of them
COMMON = {"the", "and", "i", "to", "of", "a", "my", "you", "that", "in", "is", "not", "me", "it", "with", "for",
          "be", "your", "his", "this", "he", "have", "thou", "but", "so", "will", "what", "shall", "thy", "our"}


def test_demo_writes_english():
    engine = Engine.load(DEMO)
    text = "".join(t.text for t in engine.generate("KING HENRY.\n", max_new_tokens=120, temperature=0))
    words = re.findall(r"[a-z']+", text.lower())
    assert len(words) >= 40, text
    share = sum(w in COMMON for w in words) / len(words)
    assert share >= 0.25, (share, text)
    reply = "".join(t.text for t in engine.generate([{"role": "user", "content": "Hello"}], max_new_tokens=30,
                                                    temperature=0))
    assert reply.strip() and "<|" not in reply, reply
