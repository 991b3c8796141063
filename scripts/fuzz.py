"""The long run of the property tests (tests/test_properties.py): many more generated cases against the
safetensors reader, the manifest loader, the API request parser and JSON schemas for constrained decoding,
then the figures for docs/testing.md.

    .venv/bin/python scripts/fuzz.py [examples per test, default 20000]
"""
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    os.environ["WEBMOE_FUZZ_EXAMPLES"] = str(examples)
    t0 = time.time()
    code = pytest.main(["-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_properties.py")])
    outcomes = sys.modules["test_properties"].OUTCOMES
    print(f"\n{examples} examples per property, {time.time() - t0:.0f} s")
    print(f"{'reader':<22} {'cases':>8} {'accepted':>9} {'clear error':>12}")
    for reader in sorted({r for r, _ in outcomes}):
        ok, err = outcomes[reader, "accepted"], outcomes[reader, "clear error"]
        print(f"{reader:<22} {ok + err:>8} {ok:>9} {err:>12}")
    print("crashes (a property failed):", "0" if code == 0 else "see the failures above")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
