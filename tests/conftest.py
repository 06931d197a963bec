"""Test set-up: no network, offline Hugging Face, tiny models built locally and cached per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# under pytest-xdist each worker gets its share of the cores: torch's default (every core per process)
# oversubscribes them, and spinning thread pools then slow training fixtures down by an order of magnitude.
# Set before torch is imported here, so commands the tests start inherit it too.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _share = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _share)

ROOT = Path(__file__).resolve().parents[1]
_real_connect = socket.socket.connect


LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_strict = [False]  # set by the no_network fixture: not even loopback


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family == socket.AF_UNIX:
        return _real_connect(self, address)
    host = address[0] if isinstance(address, tuple) else None
    if host in LOOPBACK and not _strict[0]:  # a local server standing in for the Hub
        return _real_connect(self, address)
    raise OSError(f"network access is blocked in tests (tried {address!r})")


@pytest.fixture
def no_network():
    """Refuse every connection, loopback included, for the length of a test."""
    _strict[0] = True
    yield
    _strict[0] = False


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = lambda self, address: _guarded_connect(self, address)  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory):
    """``toy(family, seed=0, perturb_from=None)`` -> path of a tiny random model, built once per session."""
    from mergeflow.testing.models import build

    root = tmp_path_factory.mktemp("toy")
    cache: dict[tuple, Path] = {}

    def make(family: str, seed: int = 0, perturb_from: Path | None = None, **kw: object) -> Path:
        key = (family, seed, str(perturb_from), repr(sorted(kw.items())))
        if key not in cache:
            cache[key] = build(
                family, root / f"{family}-{seed}-{len(cache)}", seed=seed, perturb_from=perturb_from, **kw
            )
        return cache[key]

    return make


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of recipes/ beside demo_out/models/{base,math,code,vit-*}, as `make demo` lays them out."""
    from mergeflow.demo.run import build_models

    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(ROOT / "recipes", root / "recipes")
    build_models(root / "demo_out" / "models")
    from mergeflow.testing.models import build
    from mergeflow.testing.train import DEMO_VIT, digits, save_npz

    for seed in (11, 12):  # the demo trains these; untrained ones of the same shape serve the recipes here
        build("vit", root / "demo_out" / "models" / f"vit-seed{seed}", seed=seed, config=DEMO_VIT)
    save_npz(root / "demo_out" / "digits-train.npz", *digits("train"))
    return root


@pytest.fixture(scope="session")
def digits_finetunes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT trained on all digits (init/), fine-tuned on digits 0-4 (a/) and on 5-9 (b/): trained once per
    test run and shared by the xdist workers (the first to ask trains, under a lock; the others wait and
    read). Read-only: tests link to these folders from their own."""
    import filelock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "digits-finetunes"
    with filelock.FileLock(str(shared / "digits-finetunes.lock")):
        if not (root / "done").exists():
            from mergeflow.testing import train as tt

            x, y = tt.digits("train")
            init = tt.train_vit(root / "init", x, y, seed=0, epochs=8)
            lo = y < 5
            tt.train_vit(root / "a", x[lo], y[lo], seed=1, epochs=4, init_from=init, lr=1e-3)
            tt.train_vit(root / "b", x[~lo], y[~lo], seed=2, epochs=4, init_from=init, lr=1e-3)
            (root / "done").touch()
    return root


def linked(finetunes: Path, folder: Path) -> Path:
    """``folder`` holding links to the shared fine-tuned models (init, a, b), for a test to write beside."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("init", "a", "b"):
        (folder / name).symlink_to(finetunes / name, target_is_directory=True)
    return folder


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``mergeflow`` command in a subprocess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MERGEFLOW_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "mergeflow.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``mergeflow`` command in this process (no interpreter start-up): exit code, stdout and
    stderr as ``run_cli`` gives them, warnings printed to stderr as the command prints them."""
    import contextlib
    import io
    import warnings

    from mergeflow.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: err.write(f"warning: {m}\n")
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["mergeflow", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def online(tmp_path, toy, monkeypatch):
    """A stand-in Hub (tests/hub_server.py) serving org/base, org/tuned and a gated copy, HF_ENDPOINT pointed at
    it, an empty cache, the network allowed: (root, hub, commits, server)."""
    from tests.hub_server import FakeHub

    hub = FakeHub()
    base = toy("llama")
    (tmp_path / "extra").mkdir()
    commits = {
        "org/base": hub.add("org/base", base),
        "org/tuned": hub.add("org/tuned", toy("llama", seed=1)),
        "org/gated": hub.add("org/gated", base, gated=True),
    }
    server, url = hub.start()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, at import (conftest set it for the whole suite); a real
    # `mergeflow` process imports it with the environment it is started in
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path, hub, commits, server
    server.shutdown()


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """A bare pretrained encoder (no prefix, an int64 position_ids buffer, a pooler), a sequence classifier
    fine-tuned from it (prefix bert., pooler, 3 labels) and a token classifier (prefix bert., no pooler,
    5 labels)."""
    import torch
    import transformers

    from mergeflow.testing.models import save_tokenizer
    from tests.helpers import CFG, NER, save_model

    root = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    base = transformers.BertModel(transformers.BertConfig(**CFG))
    save_model(base, root / "base", {"embeddings.position_ids": torch.arange(64)[None]})
    save_tokenizer(root / "base")
    state = base.state_dict()
    out = {}
    for name, cls, labels, seed in (
        ("sent", "BertForSequenceClassification", {0: "neg", 1: "neu", 2: "pos"}, 1),
        ("ner", "BertForTokenClassification", dict(enumerate(NER)), 2),
    ):
        torch.manual_seed(seed)
        m = getattr(transformers, cls)(
            transformers.BertConfig(**CFG, id2label=labels, label2id={v: k for k, v in labels.items()})
        )
        with torch.no_grad():
            for k, p in m.bert.state_dict().items():
                if k in state:
                    p.copy_(state[k] + 0.05 * torch.randn_like(p))
        out[name] = save_model(m, root / name)
        save_tokenizer(root / name)
    return root / "base", out["sent"], out["ner"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests marked ``slow`` first: under pytest-xdist a long test handed out last keeps one worker busy
    after the other has finished, and the suite then takes as long as its tail."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
