"""Models named by Hugging Face repo id (``org/name``, ``org/name@REVISION``), resolved to a local
snapshot through ``huggingface_hub``.

A local folder of the same name wins, as in transformers. Otherwise the snapshot comes from the
Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``) and
only the files a merge reads are fetched: safetensors shards and their index, config and generation
config, tokenizer files, sentence-transformers module configs and LoRA adapter files. With
``HF_HUB_OFFLINE=1`` nothing is asked of the network at all: a snapshot in the cache is used as it
is, and a missing one is one clear error. The environment is read at each call, not at import.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergeflow.errors import ModelError
from mergeflow.io.names import CONFIG_FILES, INDEX_NAME, TOKENIZER_FILES
from mergeflow.patterns import parse_repo_ref

NEEDED = [
    "*.safetensors",
    INDEX_NAME,
    *CONFIG_FILES,
    *TOKENIZER_FILES,
    "adapter_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "*/config.json",
]
PICKLED = ["pytorch_model.bin", "pytorch_model*.bin", "pytorch_model.bin.index.json"]
TRUE = ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class Resolved:
    path: str  # a local folder or file
    repo_id: str | None = None  # set when it came from the Hub
    commit: str | None = None

    def describe(self) -> str:
        return self.path if self.repo_id is None else f"{self.repo_id}@{self.commit}"


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in TRUE


def client_options() -> dict[str, Any]:
    """Token and endpoint for huggingface_hub calls, from the environment as it is now."""
    return {"token": os.environ.get("HF_TOKEN") or None, "endpoint": os.environ.get("HF_ENDPOINT") or None}


@contextlib.contextmanager
def hub_errors(who: str, repo: str, rev: str | None) -> Iterator[None]:
    """huggingface_hub's errors as one line each, naming the repo and what to do."""
    from huggingface_hub import errors

    named = f"{repo}@{rev}" if rev else repo
    try:
        yield
    except errors.GatedRepoError:
        raise ModelError(
            f"{who}: {named} is gated: accept its terms on the Hub, then log in "
            "(`hf auth login`) or set HF_TOKEN"
        ) from None
    except errors.RepositoryNotFoundError:
        raise ModelError(
            f"{who}: {named}: no such repository on the Hub (a private one needs HF_TOKEN)"
        ) from None
    except errors.RevisionNotFoundError:
        raise ModelError(f"{who}: {repo} has no revision {rev!r}") from None
    except errors.NotASafetensorsRepoError:
        raise ModelError(f"{who}: {named} has no safetensors weights") from None
    except errors.LocalEntryNotFoundError:
        if offline():
            raise ModelError(
                f"{who}: {named} is not in the Hugging Face cache ({hub_cache()}) and HF_HUB_OFFLINE "
                "is set: download it once with the network on, or unset HF_HUB_OFFLINE"
            ) from None
        raise ModelError(
            f"{who}: {named}: the Hub could not be reached and the cache ({hub_cache()}) does not hold it"
        ) from None
    except (errors.HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(f"{who}: {named}: {str(exc).splitlines()[0]}") from None


def resolve_model(
    ref: str, root: Path, who: str, pickle: bool = False, subfolder: str | None = None
) -> Resolved:
    """A model (or adapter) reference as a local path; ``who`` names it in errors. ``pickle``: fetch
    ``.bin`` weights too (a repository without safetensors, read under --allow-pickle)."""
    local = Path(ref).expanduser()
    local = local if local.is_absolute() else root / local
    parsed = parse_repo_ref(ref)
    if local.exists() or parsed is None:
        local = local / subfolder if subfolder else local
        return Resolved(str(local.resolve()) if local.exists() else str(local))
    repo, rev = parsed
    from huggingface_hub import snapshot_download

    patterns = NEEDED + (PICKLED if pickle else [])
    if subfolder:
        patterns = [f"{subfolder.strip('/')}/{p}" for p in patterns]
    with hub_errors(who, repo, rev):
        path = snapshot_download(
            repo,
            revision=rev,
            allow_patterns=patterns,
            cache_dir=str(hub_cache()),
            local_files_only=offline(),
            **client_options(),
        )
    return Resolved(str(Path(path) / subfolder) if subfolder else str(path), repo, Path(path).name)
