"""Inputs that used to give silently wrong models or hang: non-finite data and statistics, integer
tensors among floats, overrides that select nothing, catastrophic regexes, special and huge files.
Each goes through the real CLI (exit 2, one `error:` line, no output); what could hang runs under a
SIGALRM deadline."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergeflow.cli.main import main as cli_main
from tests.conftest import cli, write
from tests.helpers import clean_failure


def _pair(tmp_path, a: dict, b: dict):
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    return tmp_path / "a.safetensors", tmp_path / "b.safetensors"


def test_integer_tensor_among_floats_is_refused_unless_copied(tmp_path, capsys):
    a, b = _pair(
        tmp_path, {"w": torch.ones(4), "ids": torch.arange(4)}, {"w": torch.ones(4), "ids": torch.ones(4)}
    )
    rec = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {b}}}\nmerge: linear\n")
    err = clean_failure(capsys, ["run", str(rec), str(tmp_path / "out")], tmp_path / "out")
    assert "tensor 'ids' holds floats in 'b' (F32) but I64 in 'a'" in err
    ok = write(
        tmp_path / "ok.yml",
        f"models: {{a: {a}, b: {b}}}\nmerge: linear\n"
        "overrides: [{match: ids, merge: {passthrough: {source: a}}}]\n",
    )
    res = cli("run", str(ok), str(tmp_path / "copied"), "-q")
    assert res.returncode == 0, res.stderr


def test_override_that_selects_nothing_warns_and_fails_under_strict(tmp_path, capsys):
    a, b = _pair(tmp_path, {"w": torch.ones(4)}, {"w": torch.zeros(4)})
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nmerge: linear\n"
        "overrides:\n  - match: '*.mlp.*'\n    params: {weight: 2}\n"
        "  - match: w\n    params: {weight: 1}\n",
    )
    res = cli("run", str(rec), str(tmp_path / "out"), "-q")
    assert (
        res.returncode == 0
        and "warning:" in res.stderr
        and "overrides[0] (match: '*.mlp.*') matches no tensor" in res.stderr
        and "overrides[1]" not in res.stderr
    )
    err = clean_failure(capsys, ["plan", str(rec), "--strict"])
    assert "overrides[0]" in err
    clean_failure(capsys, ["run", str(rec), str(tmp_path / "strict"), "--strict"], tmp_path / "strict")


@pytest.mark.parametrize("kind", ["x-nan", "x-inf"])
def test_non_finite_data_is_refused_by_example(tmp_path, toy, capsys, kind):
    x = np.zeros((6, 3, 8, 8), np.float32)
    x[4, 0, 1, 2] = np.nan if kind == "x-nan" else np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(6, np.int64))
    err = clean_failure(
        capsys,
        [
            "stats",
            str(toy("vit")),
            "--data",
            str(tmp_path / "d.npz"),
            "--kind",
            "gram",
            "-o",
            str(tmp_path / "g.safetensors"),
        ],
    )
    assert "example 4 of 'x' has NaN or Inf" in err and not (tmp_path / "g.safetensors").exists()


def test_non_finite_statistics_are_refused_when_merging(tmp_path, capsys):
    from mergeflow.io.stats_file import write_stats

    a, b = _pair(tmp_path, {"fc.weight": torch.ones(2, 3)}, {"fc.weight": torch.zeros(2, 3)})
    for name in ("a", "b"):
        g = torch.eye(3)
        if name == "b":
            g[1, 1] = float("nan")
        write_stats(tmp_path / f"{name}.safetensors", {"fc.weight": g}, "gram", 4, name)
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nmerge: regmean\n"
        f"stats: {{a: {tmp_path / 'a.safetensors'}, b: {tmp_path / 'b.safetensors'}}}\n",
    )
    err = clean_failure(capsys, ["run", str(rec), str(tmp_path / "out"), "-q"], tmp_path / "out")
    assert "statistics of model 'b' for tensor 'fc.weight' have NaN or Inf" in err


def test_jsonl_label_too_large_is_one_line(tmp_path, toy, capsys):
    data = write(
        tmp_path / "d.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1180591620717411303424}\n'
    )
    err = clean_failure(
        capsys,
        [
            "stats",
            str(toy("llama")),
            "--data",
            str(data),
            "--kind",
            "gram",
            "-o",
            str(tmp_path / "g.safetensors"),
        ],
    )
    assert "d.jsonl:2: 'label' 1180591620717411303424 is out of range" in err


def test_resume_notices_an_input_rewritten_with_the_same_size_and_mtime(tmp_path, capsys):
    """`cp -p` / `rsync -a` keep size and mtime; the fingerprint's ctime and inode do not survive."""
    a, b = _pair(tmp_path, {"w": torch.ones(64)}, {"w": torch.zeros(64)})
    rec = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {b}}}\nmerge: linear\n")
    out = tmp_path / "out"
    # an interrupted run: the partial output with a journal of its completed shard
    from mergeflow.graph import run as runner

    opts = runner.Options(device="cpu")
    prep = runner.prepare(rec, opts)
    with pytest.raises(KeyboardInterrupt):

        def interrupt(*_a, **_k):
            raise KeyboardInterrupt

        orig = runner.write_support
        runner.write_support = interrupt
        try:
            runner.run(prep, out, opts)
        finally:
            runner.write_support = orig
    st = os.stat(b)
    save_file({"w": torch.full((64,), 3.0)}, str(tmp_path / "new.safetensors"))
    assert os.path.getsize(tmp_path / "new.safetensors") == st.st_size
    with open(b, "r+b") as fh:  # in place, as cp -p does, then the old times put back
        fh.write((tmp_path / "new.safetensors").read_bytes())
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = cli("run", str(rec), str(out), "--resume")
    assert res.returncode == 0, res.stderr
    assert "kept 0 of 1 shard(s)" in res.stdout
    from safetensors.torch import load_file

    assert torch.equal(
        load_file(str(out / "model.safetensors"))["w"], torch.full((64,), 2.0)
    )  # (1 + 3) / 2: the new bytes


# ------------------------------------------------------------------------------------------------ hangs
@contextlib.contextmanager
def deadline(seconds: int = 30) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts a blocking open or read in this (main) thread."""

    def fire(_sig: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: it hangs")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def in_process(capsys, argv: list[str]) -> str:
    """The CLI's failure line, run in this process under a deadline (see clean_failure)."""
    with deadline():
        return clean_failure(capsys, argv)


def test_catastrophic_regex_does_not_hang(tmp_path, toy, capsys):
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {toy('llama')}, b: {toy('llama', seed=1)}}}\nmerge: linear\n"
        "overrides:\n  - regex: '^(([a-z_.0-9])+)+X$'\n    params: {weight: 2}\n",
    )
    # Python's re takes hours on these names; RE2 answers at once
    with deadline(), pytest.warns(UserWarning, match="matches no tensor"):
        cli_main(["run", str(rec), str(tmp_path / "out"), "-q"])
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
@pytest.mark.parametrize("command", ["validate", "convert", "align-steps", "plan", "data"])
def test_special_files_are_refused_by_name(tmp_path, toy, capsys, special, command):
    path = special
    if special == "fifo":
        path = str(tmp_path / "pipe.yml")
        os.mkfifo(path)
    argv = {
        "validate": ["validate", path],
        "convert": ["convert", path],
        "plan": ["plan", path],
        "align-steps": [
            "align",
            str(toy("llama", seed=1)),
            "--anchor",
            str(toy("llama")),
            "--steps",
            path,
            "-o",
            str(tmp_path / "out"),
        ],
        "data": [
            "stats",
            str(toy("llama")),
            "--data",
            path,
            "--kind",
            "gram",
            "-o",
            str(tmp_path / "g.safetensors"),
        ],
    }[command]
    err = in_process(capsys, argv)
    assert ("is a FIFO" if special == "fifo" else "is a character device") in err, err


def test_fifo_named_by_an_index_is_refused(tmp_path, toy, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(toy("llama"), bad)
    shard = sorted(bad.glob("model-*.safetensors"))[0]
    shard.unlink()
    os.mkfifo(shard)
    rec = write(tmp_path / "r.yml", f"models: {{a: {toy('llama')}, b: {bad}}}\nmerge: linear\n")
    assert "is a FIFO" in in_process(capsys, ["run", str(rec), str(tmp_path / "out")])


def test_huge_sparse_recipe_is_refused_without_reading_it(tmp_path, capsys):
    big = tmp_path / "big.yml"
    with open(big, "wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB of holes: reading it whole would take seconds and a GiB of memory
    err = clean_failure(capsys, ["validate", str(big)])
    assert "larger than 4 MiB" in err


def test_huge_npz_declaration_is_refused_before_allocation(tmp_path, toy, capsys):
    import zipfile

    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:  # 300 TB declared in a few hundred bytes
        z.writestr("x.npy", _npy_header((1 << 40, 3, 8, 8)))
    err = clean_failure(
        capsys,
        [
            "stats",
            str(toy("vit")),
            "--data",
            str(tmp_path / "d.npz"),
            "--kind",
            "gram",
            "-o",
            str(tmp_path / "g.safetensors"),
        ],
    )
    assert (
        "declares shape" in err and "more than half the memory available" in err and "max-memory" not in err
    )


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()  # magic string and header, no data


def test_empty_npz_is_an_error_not_an_interruption(tmp_path, toy, capsys):
    (tmp_path / "e.npz").write_bytes(b"")
    err = clean_failure(
        capsys,
        [
            "stats",
            str(toy("vit")),
            "--data",
            str(tmp_path / "e.npz"),
            "--kind",
            "gram",
            "-o",
            str(tmp_path / "g.safetensors"),
        ],
    )
    assert "not a readable .npz" in err


# ------------------------------------------------------------------------------- errors in one clean line
def test_shape_beyond_int64_is_one_line(tmp_path, capsys):
    import json
    import struct

    raw = json.dumps(
        {
            "w": {"dtype": "F32", "shape": [2**63, 0], "data_offsets": [0, 0]},
            "v": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        }
    ).encode()
    for name in ("a", "b"):
        (tmp_path / f"{name}.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    rec = write(tmp_path / "r.yml", "models: {a: a.safetensors, b: b.safetensors}\nmerge: linear\n")
    assert "invalid shape" in clean_failure(capsys, ["run", str(rec), str(tmp_path / "o")], tmp_path / "o")


def test_header_over_safetensors_limit_is_refused_by_mergeflow(tmp_path):
    import struct

    from mergeflow.errors import ModelError
    from mergeflow.io.header import read_header

    p = tmp_path / "h.safetensors"
    with open(p, "wb") as fh:
        fh.write(struct.pack("<Q", 100_000_001))
        fh.truncate(8 + 100_000_001)
    with pytest.raises(ModelError, match="corrupt safetensors header"):
        read_header(p)


@pytest.mark.parametrize(
    "device,message", [("tpu", "not a device"), ("mps", "runs on cpu or cuda"), ("cuda:x", "not a device")]
)
def test_bad_device_is_one_line(tmp_path, capsys, device, message):
    a, b = _pair(tmp_path, {"w": torch.ones(4)}, {"w": torch.zeros(4)})
    rec = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {b}}}\nmerge: linear\n")
    assert message in clean_failure(capsys, ["run", str(rec), str(tmp_path / "o"), "--device", device])


@pytest.mark.parametrize(
    "op", ["della", "della_linear", "ties", "dare_ties", "breadcrumbs", "sce", "model_stock"]
)
def test_zero_size_tensors_merge_through_the_cli(tmp_path, op):
    tensors = [{"w": torch.zeros(0, 4), "v": torch.full((3,), float(i))} for i in range(3)]
    for i, t in enumerate(tensors):
        save_file(t, str(tmp_path / f"m{i}.safetensors"))
    rec = write(
        tmp_path / "r.yml",
        f"models: {{m0: m0.safetensors, m1: m1.safetensors, m2: m2.safetensors}}\nbase: m0\nmerge: {op}\n",
    )
    res = cli("run", str(rec), str(tmp_path / "o"), "-q")
    assert res.returncode == 0, res.stderr


def test_barrier_labels_out_of_range_is_one_line(tmp_path, toy, capsys):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 8, 8), np.float32), y=np.array([0, 1, 99, 2]))
    vit = toy("vit")
    err = clean_failure(
        capsys,
        [
            "eval",
            "barrier",
            str(vit),
            str(vit),
            "--data",
            str(tmp_path / "d.npz"),
            "-o",
            str(tmp_path / "b"),
            "-q",
        ],
    )
    assert "label 99 of example 2 is out of range" in err


def test_memory_budgets_are_explained_and_tiny_ones_refused_when_parsed(tmp_path, capsys):
    a, b = _pair(tmp_path, {"w": torch.ones(4)}, {"w": torch.zeros(4)})
    rec = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {b}}}\nmerge: linear\n")
    assert "below the smallest budget" in clean_failure(capsys, ["plan", str(rec), "--max-memory", "1KB"])
    res = cli("plan", str(rec), "--max-memory", "256MB")
    assert res.returncode == 0, res.stderr
    assert (
        "memory budget: 244.14 MiB (--max-memory 256MB); tensors in flight may use 183.11 MiB" in res.stdout
    )


def test_tiny_budget_error_names_the_share_and_the_size_to_ask_for(tmp_path):
    from mergeflow.errors import MemoryBudgetError
    from mergeflow.graph import run as runner

    a, b = _pair(tmp_path, {"w": torch.ones(1 << 20)}, {"w": torch.zeros(1 << 20)})
    rec = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {b}}}\nmerge: linear\n")
    with pytest.raises(
        MemoryBudgetError,
        match=r"more than the 0\.8 MiB that tensors in flight may use .* "
        r"raise --max-memory to at least \d+MiB",
    ):
        runner.prepare(rec, runner.Options(device="cpu", max_memory=1 << 20))


# ------------------------------------------------------------------------------------ the Hugging Face cache
def _cache_snapshot(root, model, repo="models--org--name", rev="abc123"):
    """Lay ``model`` out as the Hugging Face cache does: blobs by hash, snapshot files as relative links."""
    import hashlib

    blobs = root / repo / "blobs"
    snap = root / repo / "snapshots" / rev
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in model.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        (blobs / digest).write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.join("..", "..", "blobs", digest))
    return snap


def test_a_sharded_cache_snapshot_is_accepted_and_links_out_of_it_refused(tmp_path, toy, capsys):
    snap = _cache_snapshot(tmp_path / "hub", toy("llama"))
    assert len(list(snap.glob("model-*.safetensors"))) > 1 and all(p.is_symlink() for p in snap.iterdir())
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {snap}, b: {toy('llama', seed=1)}}}\nmerge: linear\n"
        "output: {config: a, tokenizer: a}\n",
    )
    res = cli("run", str(rec), str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()
    # a link that leaves the cache repository is refused, whether named by the index or not
    other = _cache_snapshot(tmp_path / "hub2", toy("llama"), repo="models--org--other")
    shard = sorted(snap.glob("model-*.safetensors"))[0]
    shard.unlink()
    shard.symlink_to(next((other.parent.parent / "blobs").iterdir()))
    err = clean_failure(capsys, ["run", str(rec), str(tmp_path / "out2")], tmp_path / "out2")
    assert "lies outside the model directory" in err
    single = tmp_path / "single"
    single.mkdir()
    (single / "model.safetensors").symlink_to(sorted(toy("llama").glob("model-*.safetensors"))[0])
    rec2 = write(tmp_path / "r2.yml", f"models: {{a: {single}, b: {single}}}\nmerge: linear\n")
    err = clean_failure(capsys, ["run", str(rec2), str(tmp_path / "out3")], tmp_path / "out3")
    assert "lies outside the model directory" in err
