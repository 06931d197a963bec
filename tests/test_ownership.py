"""Nothing a user owns is deleted or overwritten: --force replaces only a directory mergeflow wrote,
and every writer (run, align, stats, eval barrier, --report) refuses a path it does not own.
Every case goes through the real CLI and checks that the user's files are intact afterwards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mergeflow.io.ownership import MARKER, remove_owned, write_marker
from tests.conftest import cli, write
from tests.helpers import clean_failure


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry below ``root`` (links by their target, files by their bytes), not following links."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            out[rel] = (
                ("link:" + os.readlink(p)) if p.is_symlink() else (p.read_bytes() if p.is_file() else "dir")
            )
    return out


@pytest.fixture
def project(tmp_path, toy, monkeypatch):
    """A user's project folder holding code and the recipe, with a sibling project beside it; cwd is the project."""
    root = tmp_path / "work"
    proj = root / "proj"
    write(proj / "src" / "train.py", "print('my code')\n")
    write(root / "sibling" / "notes.txt", "do not lose me\n")
    rec = write(proj / "r.yml", f"models: {{a: {toy('llama')}, b: {toy('llama', seed=1)}}}\nmerge: linear\n")
    monkeypatch.chdir(proj)
    return root, proj, rec


@pytest.mark.parametrize("out", [".", "..", "src", "r.yml"])
def test_force_never_replaces_the_working_directory_its_parents_or_user_files(project, capsys, out):
    root, _proj, rec = project
    before = snapshot(root)
    err = clean_failure(capsys, ["run", str(rec), out, "--force"])
    assert "mergeflow" in err or "input" in err
    assert snapshot(root) == before


def test_force_refuses_home_root_and_folders_with_other_files(project, capsys, monkeypatch, tmp_path):
    root, proj, rec = project
    home = tmp_path / "home"
    write(home / ".bashrc", "export A=1\n")
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(tmp_path)
    assert "home directory" in clean_failure(capsys, ["run", str(rec), str(home), "--force"])
    assert "root directory" in clean_failure(capsys, ["run", str(rec), "/", "--force"])
    assert "overlaps input" in clean_failure(
        capsys, ["run", str(rec), str(root), "--force"]
    )  # holds the recipe
    err = clean_failure(capsys, ["run", str(rec), str(root / "sibling"), "--force"])
    assert "not written by mergeflow" in err
    # without --force the message says the same thing (--force would not help)
    assert "not written by mergeflow" in clean_failure(capsys, ["run", str(rec), str(root / "sibling")])
    assert snapshot(tmp_path) == before


def test_symlinked_output_is_refused_and_its_target_kept(project, capsys):
    root, proj, rec = project
    assert cli("run", str(rec), str(root / "merged"), "-q").returncode == 0
    (root / "link").symlink_to(root / "merged")
    (root / "link-to-sibling").symlink_to(root / "sibling")
    before = snapshot(root)
    for link in ("link", "link-to-sibling"):
        assert "symbolic link" in clean_failure(capsys, ["run", str(rec), str(root / link), "--force"])
    assert snapshot(root) == before


def test_force_replaces_a_mergeflow_output_but_not_once_a_user_file_is_added(project, capsys):
    root, proj, rec = project
    out = root / "merged"
    assert cli("run", str(rec), str(out), "-q").returncode == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "mergeflow" and "model.safetensors" in " ".join(marker["files"])
    assert set(marker["files"]) == {p.name for p in out.iterdir()}
    assert "already exists" in clean_failure(capsys, ["run", str(rec), str(out)])
    assert cli("run", str(rec), str(out), "--force", "-q").returncode == 0
    write(out / "my-eval-results.txt", "precious\n")
    err = clean_failure(capsys, ["run", str(rec), str(out), "--force"])
    assert "did not write (my-eval-results.txt)" in err
    (out / "my-eval-results.txt").unlink()
    (out / "sub").mkdir()
    assert "did not write (sub/)" in clean_failure(capsys, ["run", str(rec), str(out), "--force"])
    (out / "sub").rmdir()
    (out / "evil").symlink_to(root / "sibling")
    assert "did not write (evil/)" in clean_failure(capsys, ["run", str(rec), str(out), "--force"])
    (out / "evil").unlink()


def test_a_forged_marker_does_not_make_a_folder_replaceable(project, capsys):
    root, _proj, rec = project
    victim = root / "sibling"
    write_marker(victim, ["config.json"])  # lists a file that is not there; notes.txt is not listed
    before = snapshot(root)
    assert "did not write (notes.txt)" in clean_failure(capsys, ["run", str(rec), str(victim), "--force"])
    assert snapshot(root) == before


def test_an_empty_folder_made_ahead_is_filled(project):
    root, _proj, rec = project
    (root / "empty").mkdir()
    res = cli("run", str(rec), str(root / "empty"), "-q")
    assert res.returncode == 0, res.stderr
    assert (root / "empty" / MARKER).is_file()


def test_a_folder_in_the_way_of_the_partial_output_is_kept(project, capsys):
    root, _proj, rec = project
    write(root / ".merged.mergeflow-partial" / "mine.txt", "not mergeflow's\n")
    before = snapshot(root)
    assert "did not create it" in clean_failure(capsys, ["run", str(rec), str(root / "merged")])
    assert snapshot(root) == before


def test_removing_an_old_output_deletes_only_listed_files(tmp_path):
    d = tmp_path / "old"
    write(d / "a.safetensors", "x")
    write(d / "1_Pooling" / "config.json", "{}")
    write_marker(d, ["a.safetensors", "1_Pooling/config.json"])
    write(d / "late.txt", "arrived after the check\n")
    assert remove_owned(d) == ["late.txt"]
    assert sorted(p.name for p in d.iterdir()) == ["late.txt"]
    write(tmp_path / "new" / "a.safetensors", "x")
    write(tmp_path / "new" / "b" / "c.json", "{}")
    write_marker(tmp_path / "new", ["a.safetensors", "b/c.json"])
    assert remove_owned(tmp_path / "new") == [] and not (tmp_path / "new").exists()


def test_align_output_follows_the_same_rule(project, capsys, toy):
    root, _proj, _rec = project
    before = snapshot(root)
    args = ["align", str(toy("llama", seed=1)), "--anchor", str(toy("llama")), "--force", "-q", "-o"]
    assert "not written by mergeflow" in clean_failure(capsys, [*args, str(root / "sibling")])
    assert "current directory" in clean_failure(capsys, [*args, "."])
    assert snapshot(root) == before


def test_report_never_overwrites_a_user_file_or_an_input(project, capsys, toy):
    root, proj, rec = project
    before = snapshot(root)
    shard = next(toy("llama").glob("*.safetensors"))
    shard_bytes = shard.read_bytes()
    for target in (root / "sibling" / "notes.txt", shard, rec):
        clean_failure(capsys, ["run", str(rec), str(root / "m1"), "--report", str(target)], root / "m1")
    assert "inside the output" in clean_failure(
        capsys, ["run", str(rec), str(root / "m2"), "--report", str(root / "m2" / "r.json")], root / "m2"
    )
    assert snapshot(root) == before and shard.read_bytes() == shard_bytes
    report = root / "report.json"
    for force in ([], ["--force"]):  # its own report is replaced on the next run
        res = cli("run", str(rec), str(root / "m3"), "--report", str(report), "-q", *force)
        assert res.returncode == 0, res.stderr
    assert json.loads(report.read_text())["written_by"] == "mergeflow"


def test_stats_and_barrier_outputs_refuse_user_files_and_inputs(tmp_path, toy, capsys):
    a = toy("llama")
    data = write(tmp_path / "d.txt", "hello world\nthe quick brown fox\n")
    mine = write(tmp_path / "mine.safetensors", "user bytes")
    shard = next(a.glob("*.safetensors"))
    shard_bytes = shard.read_bytes()
    for target in (mine, shard, data):
        clean_failure(capsys, ["stats", str(a), "--data", str(data), "--kind", "gram", "-o", str(target)])
    write(tmp_path / "bar.png", "my picture")
    clean_failure(
        capsys, ["eval", "barrier", str(a), str(a), "--data", str(data), "-o", str(tmp_path / "bar")]
    )
    err = clean_failure(
        capsys, ["eval", "barrier", str(a), str(a), "--data", str(data), "-o", str(a / "bar")]
    )
    assert "inside the input" in err
    assert mine.read_text() == "user bytes" and shard.read_bytes() == shard_bytes
    assert (tmp_path / "bar.png").read_text() == "my picture" and data.read_text().startswith("hello")
    # mergeflow's own files are replaced on the next run
    for _ in range(2):
        res = cli(
            "stats",
            str(a),
            "--data",
            str(data),
            "--kind",
            "gram",
            "-o",
            str(tmp_path / "g.safetensors"),
            "-q",
            "--device",
            "cpu",
        )
        assert res.returncode == 0, res.stderr
        res = cli(
            "eval",
            "barrier",
            str(a),
            str(a),
            "--data",
            str(data),
            "--points",
            "3",
            "-o",
            str(tmp_path / "b2"),
            "--device",
            "cpu",
            "-q",
        )
        assert res.returncode == 0, res.stderr


def test_an_output_of_an_earlier_version_without_marker_is_recognised(project, capsys):
    root, _proj, rec = project
    out = root / "merged"
    assert cli("run", str(rec), str(out), "-q").returncode == 0
    (out / MARKER).unlink()  # as written before the marker existed
    res = cli("run", str(rec), str(out), "--force", "-q")
    assert res.returncode == 0, res.stderr
    (out / MARKER).unlink()
    write(out / "notes.md", "mine\n")  # anything else in it: not recognised
    assert "not written by mergeflow" in clean_failure(capsys, ["run", str(rec), str(out), "--force"])
    assert (out / "notes.md").read_text() == "mine\n"


# ------------------------------------------------------------------ class 2: outputs never written over inputs
def test_resume_never_writes_through_links_planted_in_the_partial_output(project):
    """Every name mergeflow writes in the partial directory is a link to a victim file (or a hard link to
    an input shard); --resume replaces the names and leaves every victim byte-identical."""
    from mergeflow.io.names import CONFIG_FILES, INDEX_NAME
    from mergeflow.io.ownership import MARKER as M

    root, _proj, rec = project
    ref = root / "reference"
    assert cli("run", str(rec), str(ref), "-q").returncode == 0
    partial = root / ".out.mergeflow-partial"
    partial.mkdir()
    write_marker(partial, [], kind="partial")
    victims = root / "victims"
    names = [
        *(p.name for p in ref.iterdir() if p.name != M),
        INDEX_NAME,
        *CONFIG_FILES,
        ".mergeflow-journal.json",
        ".mergeflow-journal.tmp",
        "alignment.json",
    ]
    for name in names:
        v = write(victims / name, f"victim {name}\n")
        (partial / name).unlink(missing_ok=True)
        (partial / name).symlink_to(v)
    before = snapshot(victims)
    res = cli("run", str(rec), str(root / "out"), "--resume", "-q")
    assert res.returncode == 0, res.stderr
    assert snapshot(victims) == before
    out = root / "out"
    assert not any(p.is_symlink() for p in out.iterdir())
    for f in ref.iterdir():
        if f.name not in ("README.md", M):
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name


def test_a_hard_link_to_an_input_in_the_partial_output_is_not_written_through(project, toy):
    root, _proj, rec = project
    shard = sorted(toy("llama").glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    partial = root / ".out.mergeflow-partial"
    partial.mkdir()
    write_marker(partial, [], kind="partial")
    os.link(shard, partial / "model.safetensors")
    res = cli("run", str(rec), str(root / "out"), "--resume", "-q")
    assert res.returncode == 0, res.stderr
    assert shard.read_bytes() == data


def test_report_over_a_hard_link_of_an_input_is_refused(project, toy, capsys):
    root, _proj, rec = project
    shard = sorted(toy("llama").glob("model-*.safetensors"))[0]
    os.link(shard, root / "looks-harmless.json")
    err = clean_failure(
        capsys, ["run", str(rec), str(root / "o"), "--report", str(root / "looks-harmless.json")], root / "o"
    )
    assert "input" in err


def test_own_files_are_recognised_whatever_their_header_size(tmp_path):
    import torch

    from mergeflow.io.recognise import file_written_by_mergeflow
    from mergeflow.io.stats_file import write_stats

    big = write_stats(
        tmp_path / "big.safetensors",
        {f"model.layers.{i}.w": torch.ones(1) for i in range(3000)},
        "fisher",
        1,
        "m",
    )  # a header of well over 64 KiB, as a 70B model's statistics have
    assert big.stat().st_size > 1 << 17 and file_written_by_mergeflow(big)
    write(tmp_path / "r.json", json.dumps({"written_by": "mergeflow", "pad": "x" * (1 << 17)}))
    assert file_written_by_mergeflow(tmp_path / "r.json")
    for foreign in ('{"a": 1}', "plain text", ""):
        assert not file_written_by_mergeflow(write(tmp_path / "f", foreign))


def test_reports_and_barrier_json_of_earlier_versions_are_recognised(tmp_path):
    from mergeflow.io.recognise import file_written_by_mergeflow

    old_report = {
        k: 0
        for k in (
            "output",
            "seconds",
            "tensors",
            "bytes_read",
            "bytes_written",
            "shards",
            "peak_rss_bytes",
            "max_memory_bytes",
            "device",
            "operators",
        )
    }
    old_barrier = {"a": "A", "b": "B", "data": "d.txt", "examples": 3, "variants": {}}
    for i, data in enumerate((old_report, old_barrier)):
        assert file_written_by_mergeflow(write(tmp_path / f"{i}.json", json.dumps(data)))
    assert not file_written_by_mergeflow(write(tmp_path / "x.json", json.dumps({**old_barrier, "mine": 1})))


def test_the_scrambling_utility_never_writes_into_a_users_folder(tmp_path, toy):
    """mergeflow.testing.scramble_model (used by benchmarks and the demo) would overwrite config.json and
    model.safetensors in its destination: a folder with anything in it is refused, untouched."""
    from mergeflow.testing.scramble import scramble_model

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("my own")
    with pytest.raises(FileExistsError, match="not empty"):
        scramble_model(toy("llama"), mine, seed=1)
    assert [f.name for f in mine.iterdir()] == ["config.json"] and (
        mine / "config.json"
    ).read_text() == "my own"
    assert (scramble_model(toy("llama"), tmp_path / "new", seed=1) / "model.safetensors").exists()
