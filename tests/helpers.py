"""Helpers the tests share (one module, so tests never import each other)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mergeflow.cli.main import main as cli_main
from mergeflow.graph import run as runner
from mergeflow.testing.checkpoints import write_checkpoint
from mergeflow.testing.models import CHARS
from tests.conftest import cli, write

CAUSAL = {
    "llama",
    "gpt2",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "phi3",
    "olmo2",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
}
CLASSIFY = {"bert", "roberta", "distilbert", "deberta-v2"}
MOE = {"mixtral", "qwen2_moe", "qwen3_moe"}
QK_NORM = {
    "qwen3": "head",
    "gemma3": "head",
    "olmo2": "full",
    "qwen3_moe": "head",
}  # per-head or whole-projection QK-norm


def exact_steps(family: str, steps: str) -> str:
    """A steps list (YAML flow text) without the query/key transforms ``family``'s QK-norm makes inexact:
    no query/key rotation under any QK-norm, no query/key rescale where the norm spans all heads."""
    if family in QK_NORM:
        steps = steps.replace("rotate: {qk: true", "rotate: {qk: false")
    if QK_NORM.get(family) == "full":
        steps = steps.replace("{rescale: {}}", "{rescale: {qk: false}}")
    return steps


def align(tmp_path, model, anchor, steps: str, name="aligned", extra: str = ""):
    """``extra``: more top-level recipe lines (e.g. "align_dtype: float32\n")."""
    rec = write(
        tmp_path / f"{name}.yml",
        f"models: {{anchor: {anchor}, model: {model}}}\nanchor: anchor\n"
        f"align: {steps}\nmerge: {{passthrough: {{source: model}}}}\noutput: {{config: model}}\n{extra}",
    )
    opts = runner.Options(device="cpu")
    res = runner.run(runner.prepare(rec, opts), tmp_path / name, opts)
    return res.out, res.alignment


def align_refused(tmp_path: Path, model: Path, steps: str) -> str:
    """`mergeflow align` of ``model`` to itself with ``steps`` (a YAML flow list) fails as bad input, cleanly and
    before writing anything; returns its stderr."""
    out = tmp_path / "refused"
    steps_file = write(tmp_path / "refused-steps.yml", f"align: {steps}\n")
    res = cli("align", str(model), "--anchor", str(model), "-o", str(out), "--steps", str(steps_file))
    assert res.returncode == 2 and "Traceback" not in res.stderr and not out.exists(), res.stderr
    return res.stderr


def clean_failure(capsys, argv, out: Path | None = None, code: int = 2) -> str:
    capsys.readouterr()  # only what the command itself writes is checked, not the test's set-up
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    err = capsys.readouterr().err
    assert info.value.code == code, err
    assert "Traceback" not in err and err.strip(), err
    assert all(line.startswith("error: ") for line in err.strip().splitlines()), err
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.mergeflow-*"))
    return err


def make_adapter(base, dst, family: str, **config) -> dict[str, torch.Tensor]:
    """A PEFT adapter of ``base`` with random (not zero) updates; returns peft's merged state dict."""
    import transformers

    cls = transformers.AutoModelForCausalLM
    model = cls.from_pretrained(str(base), dtype=torch.float32)
    import peft

    pm = peft.get_peft_model(model, peft.LoraConfig(**config))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n or "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    pm.save_pretrained(str(dst))
    merged = pm.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def make_model(path, n_tensors, numel, seed, shards=2):
    """A raw checkpoint of ``n_tensors`` 1-D float32 tensors named like layers, in ``shards`` files."""
    shapes = {f"model.layers.{i}.w": (numel,) for i in range(n_tensors)}
    return write_checkpoint(path, shapes, seed, shards=shards)


def outputs(path, family, dtype=torch.float64):
    """Logits, every hidden state and (causal families) a KV-cache decoding step, in float64."""
    import transformers

    cls = {"vit": transformers.AutoModelForImageClassification}.get(
        family,
        transformers.AutoModelForCausalLM
        if family in CAUSAL
        else transformers.AutoModelForSequenceClassification,
    )
    extra = {"experts_implementation": "eager"} if family in MOE else {}  # grouped kernels lack float64
    model = cls.from_pretrained(str(path), dtype=dtype, **extra).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if family == "vit":
            out = model(
                pixel_values=torch.randn(2, 3, 16, 16, generator=gen, dtype=dtype), output_hidden_states=True
            )
            return [out.logits, *out.hidden_states]
        ids = torch.randint(4, 60, (2, 9), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0  # padding in the second sequence
        out = model(ids, attention_mask=mask, output_hidden_states=True)
        res = [out.logits, *out.hidden_states]
        if family in CAUSAL:
            first = model(ids[:, :5], use_cache=True)
            step = model(ids[:, 5:6], cache=first.cache, use_cache=True)
            res.append(step.logits)
        return res


def state(path):

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def tensor(out, name):
    index = out / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    for f in files:
        with safe_open(str(out / f), "pt") as h:
            if name in h.keys():  # noqa: SIM118
                return h.get_tensor(name)
    raise KeyError(name)


def text_data(path, n=48, seed=0):
    rng = np.random.default_rng(seed)
    chars = CHARS[:27]
    lines = ["".join(rng.choice(chars, size=int(rng.integers(8, 20)))) for _ in range(n)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    return path


def trained_norms(src: Path, dst: Path, seed: int = 0) -> Path:
    """A copy of a random-init model whose norms have the scales and shifts training gives (random-init
    ones are 1 and 0, which hide folding mistakes)."""

    from safetensors.torch import load_file, save_file

    path = Path(shutil.copytree(src, dst))
    gen = torch.Generator().manual_seed(seed)
    for f in path.glob("*.safetensors"):
        state = load_file(str(f))
        for name, t in state.items():
            if t.ndim == 1 and ("norm" in name.lower() or ".ln_" in name):
                noise = torch.randn(t.shape, generator=gen)
                state[name] = (1 + 0.5 * noise if name.endswith("weight") else 0.3 * noise).to(t.dtype)
        save_file(state, str(f), metadata={"format": "pt"})
    return path


def vision_data(path, n=48, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.random((n, 3, 16, 16), dtype=np.float32), y=rng.integers(0, 2, n))
    return path


NER = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
CFG = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)


def save_model(model, path, state=None):
    model.save_pretrained(str(path))
    if state is not None:  # add what an older checkpoint carried (position_ids)
        f = path / "model.safetensors"
        save_file({**load_file(str(f)), **state}, str(f), metadata={"format": "pt"})
    return path


def body(base, sent, ner, extra=""):
    return f"models: {{base: {base}, sent: {sent}, ner: {ner}}}\nbase: base\nmerge: task_arithmetic\n{extra}"


def files(path):
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


def kill_after(rec, out, shards: int, sig=signal.SIGKILL, stderr: list | None = None) -> int:
    """Start a real CLI run and send ``sig`` once its journal lists ``shards`` completed shards."""
    journal = out.parent / f".{out.name}.mergeflow-partial" / ".mergeflow-journal.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mergeflow.cli.main", "run", str(rec), str(out), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen = 0
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if shards == 0 and journal.parent.exists():
            break
        try:
            seen = len(json.loads(journal.read_text())["shards"])
        except (OSError, ValueError, KeyError):
            seen = 0
        if seen >= shards:
            break
        time.sleep(0.002)
    proc.send_signal(sig)
    text = proc.stderr.read().decode()
    proc.wait()
    proc.stderr.close()
    if stderr is not None:
        stderr += [text, proc.returncode]
    return seen
