"""Plan snapshots: each family's plan, built from a config alone (no checkpoint), equals the reviewed
snapshot in tests/snapshots/, so a step, binding, dispatch, geometry constant, record or resource that
changes unintentionally fails here. After an intended change, regenerate and review the diff:

    WEBMOE_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_plan_snapshots.py
"""
import json
import os
from pathlib import Path

import pytest

from webmoe.converter.model_plan import plan_from_config

SNAPSHOTS = Path(__file__).parent / "snapshots"
FAMILIES = sorted(p.name.removesuffix(".config.json") for p in SNAPSHOTS.glob("*.config.json"))


def test_every_family_has_a_snapshot():
    assert FAMILIES == ["deepseek_v3", "gpt_oss", "mixtral", "olmoe", "phimoe", "qwen2_moe", "qwen3_moe"]


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_matches_snapshot(family):
    config = json.loads((SNAPSHOTS / f"{family}.config.json").read_text())
    plan = json.loads(json.dumps(plan_from_config(config, "f16")))     # as the manifest stores it
    path = SNAPSHOTS / f"{family}.plan.json"
    if os.environ.get("WEBMOE_UPDATE_SNAPSHOTS"):
        path.write_text(json.dumps(plan, indent=1) + "\n")
    expected = json.loads(path.read_text())
    for key in sorted(set(expected) | set(plan)):
        if key == "steps":
            assert len(plan["steps"]) == len(expected["steps"]), "number of steps changed"
            for got, want in zip(plan["steps"], expected["steps"]):
                assert got == want, f"step {want['label']} changed"
        else:
            assert plan.get(key) == expected.get(key), f"plan {key} changed"


def test_plan_from_config_equals_the_converted_package(tmp_path):
    """The converter writes exactly the plan a config alone gives (mixtral here)."""
    from webmoe.converter.convert import convert
    from tiny_models import save_checkpoint
    from transformers import MixtralConfig, MixtralForCausalLM
    config = json.loads((SNAPSHOTS / "mixtral.config.json").read_text())
    ckpt = save_checkpoint(MixtralForCausalLM, MixtralConfig(**config), tmp_path / "ckpt")
    pkg = convert(ckpt, tmp_path / "pkg", "f16", progress=False)
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["plan"] == json.loads(json.dumps(plan_from_config(json.loads((ckpt / "config.json").read_text()))))
