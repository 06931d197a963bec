"""Faults: interrupted and killed runs resume to byte-identical output; disk full and concurrent runs."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from mergeflow.io.ownership import write_marker
from tests.conftest import cli, run_cli, write
from tests.helpers import files, kill_after, make_model


@pytest.fixture(scope="module")
def big_recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    models = [make_model(root / f"m{i}", 24, 1 << 19, i, shards=3) for i in range(3)]  # 3 x 48 MiB
    rec = write(
        root / "r.yml",
        "models:\n"
        + "".join(f"  m{i}: {p}\n" for i, p in enumerate(models))
        + "base: m0\nmerge: {dare_ties: {density: 0.5}}\nseed: 3\noutput: {shard_size: 4MiB}\n",
    )
    ref = root / "reference"
    assert cli("run", str(rec), str(ref), "-q").returncode == 0
    return rec, ref


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [0, 2, 7, 11])
def test_killed_run_resumes_to_identical_output(tmp_path, big_recipe, kill_at):
    rec, ref = big_recipe
    out = tmp_path / "out"
    kill_after(rec, out, kill_at)
    assert not out.exists(), "a killed run must leave nothing under the final name"
    res = cli("run", str(rec), str(out), "--resume")
    assert res.returncode == 0, res.stderr
    kept = int(res.stdout.split("kept ")[1].split(" ")[0])
    assert kept >= min(kill_at, 12) - 1  # the shard being finished at the kill may or may not have been kept
    assert files(out) == files(ref)
    assert not list(tmp_path.glob(".out.mergeflow-*"))


def test_sigterm_keeps_partial_work_and_resume_skips_it(tmp_path, big_recipe):
    rec, ref = big_recipe
    out = tmp_path / "out"
    seen = kill_after(rec, out, 4, signal.SIGTERM)
    assert not out.exists() and (tmp_path / ".out.mergeflow-partial").is_dir()
    res = cli("run", str(rec), str(out), "--resume")
    assert res.returncode == 0, res.stderr
    kept = int(res.stdout.split("kept ")[1].split(" ")[0])
    assert kept >= max(seen - 1, 1)
    assert files(out) == files(ref)


@pytest.mark.parametrize(
    "sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_an_interruption_says_what_was_kept_and_a_new_run_says_what_it_discards(
    tmp_path, big_recipe, sig, code, word
):
    rec, _ref = big_recipe
    out = tmp_path / "out"
    got: list = []
    kill_after(rec, out, 2, sig, got)
    err, rc = got
    assert rc == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{word}; the partial output was kept in ") and "--resume" in last, err
    res = cli("run", str(rec), str(out), "-q")
    assert (
        res.returncode == 0
        and "warning: discarded the partial output of an earlier interrupted run" in res.stderr
    )


@pytest.mark.slow
def test_resume_redoes_corrupted_shards_and_changed_recipes(tmp_path, big_recipe):
    rec, ref = big_recipe
    out = tmp_path / "out"
    kill_after(rec, out, 6)
    partial = tmp_path / ".out.mergeflow-partial"
    first = sorted(partial.glob("model-*.safetensors"))[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    res = cli("run", str(rec), str(out), "--resume")
    assert res.returncode == 0 and files(out) == files(ref)
    # a different recipe must not reuse shards of another
    out2 = tmp_path / "out2"
    kill_after(rec, out2, 6)
    rec2 = write(tmp_path / "r2.yml", rec.read_text().replace("seed: 3", "seed: 4"))
    res = cli("run", str(rec2), str(out2), "--resume")
    assert res.returncode == 0 and "kept 0 of" in res.stdout


def test_disk_full_is_one_line_exit_2_and_cleans_up(tmp_path, big_recipe, monkeypatch, capsys):
    from mergeflow.cli import main as cli_main

    rec, _ref = big_recipe
    calls = [0]
    real = os.pwrite

    def full(fd, data, offset):
        calls[0] += 1
        if calls[0] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["run", str(rec), str(tmp_path / "out"), "-q"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "No space left on device" in err[0] and ".safetensors" in err[0]
    )  # names the file
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_on_the_same_output_is_refused(tmp_path, big_recipe):
    import fcntl

    rec, _ref = big_recipe
    partial = tmp_path / ".out.mergeflow-partial"
    partial.mkdir()
    write_marker(partial, [], kind="partial")  # as a live run's partial output carries
    fd = os.open(partial / ".mergeflow-lock", os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        res = run_cli("run", str(rec), str(tmp_path / "out"))
        assert res.returncode == 2 and "another mergeflow run is writing" in res.stderr
    finally:
        os.close(fd)


def test_check_finite_names_the_tensor(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file(
        {"ok": torch.ones(3), "bad": torch.tensor([1.0, float("inf"), 2.0])}, str(tmp_path / "a.safetensors")
    )
    save_file({"ok": torch.ones(3), "bad": torch.ones(3)}, str(tmp_path / "b.safetensors"))
    rec = write(tmp_path / "r.yml", "models: {a: a.safetensors, b: b.safetensors}\nmerge: linear\n")
    assert cli("run", str(rec), str(tmp_path / "plain"), "-q").returncode == 0  # not checked by default
    res = cli("run", str(rec), str(tmp_path / "out"), "--check-finite")
    assert (
        res.returncode == 2 and "tensor 'bad' has NaN or Inf" in res.stderr and "Traceback" not in res.stderr
    )
    assert not (tmp_path / "out").exists()


def test_unusable_output_location(tmp_path, big_recipe):
    rec, _ref = big_recipe
    (tmp_path / "a-file").write_text("x")
    res = cli("run", str(rec), str(tmp_path / "a-file" / "out"))  # parent is a file, not a directory
    assert res.returncode == 2 and "not a writable directory" in res.stderr and "Traceback" not in res.stderr
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        res = cli("run", str(rec), str(locked / "out"))
        assert res.returncode == 2 and "not a writable directory" in res.stderr
