"""Package format versions: a manifest of the previous format (a real one: the demo package as format 3
wrote it) is refused with a message that says to convert again, by the library and by the CLI."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from webmoe.format.manifest import seal_manifest
from webmoe.engine.package import FORMAT_VERSION, Package, PackageError

ROOT = Path(__file__).resolve().parent.parent
OLD = Path(__file__).parent / "data" / "format7-manifest.json"


@pytest.fixture
def old_package(tmp_path):
    pkg = tmp_path / "old"
    shutil.copytree(ROOT / "demo" / "shakespeare-moe", pkg)
    shutil.copyfile(OLD, pkg / "manifest.json")
    return pkg


def test_previous_format_is_refused_clearly(old_package):
    assert json.loads(OLD.read_text())["format_version"] == FORMAT_VERSION - 1
    with pytest.raises(PackageError, match=r"package format 7 is older than this webmoe reads \(8\); convert the "
                                           r"checkpoint again with `webmoe convert`"):
        Package(old_package)
    r = subprocess.run([sys.executable, "-m", "webmoe", "info", str(old_package)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["webmoe: error: package format 7 is older than this webmoe reads (8); "
                                             "convert the checkpoint again with `webmoe convert`"]


def test_newer_format_asks_for_an_upgrade(tmp_path):
    pkg = tmp_path / "new"
    shutil.copytree(ROOT / "demo" / "shakespeare-moe", pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (pkg / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackageError, match="newer than this webmoe"):
        Package(pkg)


def test_plan_records_are_checked(tmp_path):
    pkg = tmp_path / "bad"
    shutil.copytree(ROOT / "demo" / "shakespeare-moe", pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    m["plan"]["moe_layers"][1]["experts"] = [0, 2]          # steps that do not read the expert slab
    (pkg / "manifest.json").write_bytes(seal_manifest(m))  # as a faulty converter would write it
    with pytest.raises(PackageError, match="malformed plan"):
        Package(pkg)


def test_routing_stats_written_by_analyze_are_checked(tmp_path):
    """`webmoe analyze --into-package` adds the expert usage it measured to the manifest and seals it
    again (the package still loads, with a new digest); usage that does not match the model's MoE layers
    and experts is refused."""
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "demo" / "shakespeare-moe", pkg)
    before = json.loads((pkg / "manifest.json").read_text())
    r = subprocess.run([sys.executable, "-m", "webmoe", "analyze", str(pkg), "--prompt", "ROMEO. But soft",
                        "--max-new-tokens", "4", "--out", str(tmp_path / "analysis"), "--into-package"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = Package(pkg).manifest
    stats = m["routing_stats"]
    assert m["manifest_sha256"] != before["manifest_sha256"] and m["manifest_sha256"] in r.stdout
    assert sorted(stats["usage"], key=int) == [str(layer) for layer in m["moe"]["moe_layers"]]
    report = json.loads((tmp_path / "analysis" / "routing.json").read_text())
    assert stats["usage"] == {layer: r["usage"] for layer, r in report["layers"].items()}
    # every routed token counted once per layer and chosen expert
    assert all(sum(counts) == stats["tokens"] * m["moe"]["top_k"] for counts in stats["usage"].values())
    assert {k: v for k, v in m.items() if k not in ("routing_stats", "manifest_sha256")} == \
        {k: v for k, v in before.items() if k not in ("routing_stats", "manifest_sha256")}
    for bad in ({"0": [1] * 8}, {**stats["usage"], "0": [1] * 7}):
        (pkg / "manifest.json").write_bytes(seal_manifest({**m, "routing_stats": {**stats, "usage": bad}}))
        with pytest.raises(PackageError, match="routing_stats.usage needs a count per expert"):
            Package(pkg)


def test_conversion_is_reproducible(tmp_path):
    """The same checkpoint converts to the same bytes whatever Python's hash seed: a set's order once put
    gpt-oss's attention biases in another order each run, and the manifest's sha256 with them."""
    import os
    from test_families import CASES
    from tiny_models import save_checkpoint
    model_cls, config = CASES["gpt_oss"]
    ckpt = save_checkpoint(model_cls, config, tmp_path / "ckpt")
    packages = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"pkg-{seed}"
        subprocess.run([sys.executable, "-m", "webmoe", "convert", str(ckpt), str(out), "--dtype", "f16"],
                       env={**os.environ, "PYTHONHASHSEED": seed}, check=True, capture_output=True)
        packages.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert packages[0] == packages[1] == packages[2]
