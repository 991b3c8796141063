"""Hub repositories natively (format/hub.py): a package by hf://ORG/REPO[@REVISION] through Package and
Engine.load, a checkpoint by ORG/REPO for `webmoe convert` (--revision), downloaded by huggingface_hub from
a local host laid out as the Hub's (tests/static_hosts.py) named by HF_ENDPOINT into HF_HOME's cache;
HF_HUB_OFFLINE reads the cache only. There is no network here: the Hub itself is never asked."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import MixtralForCausalLM

from static_hosts import hub_host
from test_mixtral import mixtral
from tiny_models import save_checkpoint
from webmoe.converter.convert import convert
from webmoe.engine import Engine
from webmoe.format.errors import PackageError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "shakespeare-moe"
IDS = [5, 77, 300, 12]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    config = mixtral(num_local_experts=4, num_experts_per_tok=2, num_hidden_layers=1)
    return save_checkpoint(MixtralForCausalLM, config, tmp_path_factory.mktemp("hub") / "ckpt")


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """HF_HOME in tmp_path, no token, online; the caller sets HF_ENDPOINT."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def digest(pkg: Path) -> str:
    return hashlib.sha256((pkg / "manifest.json").read_bytes()).hexdigest()


def test_a_package_by_hub_repository_and_revision(hub_env, checkpoint, tmp_path):
    small = convert(checkpoint, tmp_path / "small", dtype="f32", progress=False)
    log = []
    with hub_host({"webmoe/shakespeare-moe": {"main": DEMO, "small": small}}, log) as hub:
        hub_env.setenv("HF_ENDPOINT", hub)
        with Engine.load("hf://webmoe/shakespeare-moe") as e, Engine.load(DEMO) as local:
            assert np.array_equal(e.logits(IDS), local.logits(IDS))
        with Engine.load("hf://webmoe/shakespeare-moe@small") as e, Engine.load(small) as local:
            assert np.array_equal(e.logits(IDS), local.logits(IDS))
        with pytest.raises(PackageError, match="has no revision nope"):
            Engine.load("hf://webmoe/shakespeare-moe@nope")
        with pytest.raises(PackageError, match="no Hub repository webmoe/absent"):
            Engine.load("hf://webmoe/absent")
        with pytest.raises(PackageError, match="not a Hub repository: hf://just-a-name"):
            Engine.load("hf://just-a-name")
    assert any("/webmoe/shakespeare-moe/resolve/" in path for _, path, _ in log)
    # the host is gone: offline, the cache answers; a cache that lacks the repository says so
    hub_env.setenv("HF_HUB_OFFLINE", "1")
    with Engine.load("hf://webmoe/shakespeare-moe") as e:
        assert e.package.manifest["family"] == Engine.load(DEMO).package.manifest["family"]
    hub_env.setenv("HF_HOME", str(tmp_path / "empty"))
    with pytest.raises(PackageError, match="HF_HUB_OFFLINE is set and the Hub cache .* has no copy of it"):
        Engine.load("hf://webmoe/shakespeare-moe")


def test_convert_a_checkpoint_from_the_hub(hub_env, checkpoint, tmp_path):
    """`webmoe convert ORG/REPO --revision REV OUT` writes the package converting the same folder writes."""
    want = convert(checkpoint, tmp_path / "local", dtype="f16", progress=False)
    with hub_host({"mistral-like/tiny": {"v1": checkpoint}}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub}
        cli = [sys.executable, "-m", "webmoe.cli", "convert"]
        r = subprocess.run([*cli, "mistral-like/tiny", str(tmp_path / "from-hub"), "--revision", "v1"],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        bad = subprocess.run([*cli, "mistral-like/tiny", str(tmp_path / "x"), "--revision", "v2"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert digest(tmp_path / "from-hub") == digest(want)
    assert bad.returncode != 0 and "has no revision v2" in bad.stderr and not (tmp_path / "x").exists()
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr                    # a message, not a traceback
