"""Hugging Face Hub repositories as sources: a package by hf://ORG/REPO[@REVISION] (Package, Engine.load,
`webmoe run`, `webmoe serve`) and a checkpoint by ORG/REPO (`webmoe convert`, --revision). Files come with
huggingface_hub's snapshot_download into its cache, from the Hub at HF_ENDPOINT, offline (the cache only)
with HF_HUB_OFFLINE=1; the variables are read at each call (huggingface_hub reads them once, at import).
The browser's twin is web/hub.js (env.remoteHost for HF_ENDPOINT)."""
from __future__ import annotations

import os
import re
from pathlib import Path

HUB_URI = re.compile(r"^hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^\s]+))?$")
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# what `webmoe convert` needs of a checkpoint repository (weights, config, tokenizer, chat template)
CHECKPOINT_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "tokenizer*", "*.model", "*.txt"]


class HubError(ValueError):
    """A Hub repository could not be read: not found, offline without a cached copy, or unreachable."""


def hub_uri(text) -> tuple[str, str | None] | None:
    """(repo, revision) of an hf:// source, or None for anything else (a path); a malformed hf:// is a HubError."""
    text = str(text)
    if not text.startswith("hf://"):
        return None
    m = HUB_URI.match(text)
    if not m:
        raise HubError(f"not a Hub repository: {text} (hf://ORG/REPO or hf://ORG/REPO@REVISION)")
    return m["repo"], m["revision"]


def snapshot(repo: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> Path:
    """The local folder of `repo` at `revision` (default main), downloaded into the Hub cache when missing."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, \
            RevisionNotFoundError
    except ImportError:                                   # pragma: no cover - a dependency of webmoe
        raise HubError("reading Hub repositories needs huggingface_hub: pip install huggingface_hub") from None
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    where = f"{repo}@{revision}" if revision else repo
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, allow_patterns=allow_patterns,
                                      local_files_only=offline, endpoint=os.environ.get("HF_ENDPOINT") or None))
    except RevisionNotFoundError:
        raise HubError(f"the Hub repository {repo} has no revision {revision or 'main'}") from None
    except RepositoryNotFoundError:
        raise HubError(f"no Hub repository {repo} (or it is private: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set and" if offline else "the Hub could not be reached and"
        raise HubError(f"{where}: {why} the Hub cache ({cache}) has no copy of it") from None
    except (HfHubHTTPError, OSError) as e:
        raise HubError(f"{where}: could not download from the Hub ({str(e).splitlines()[0][:200]})") from None
