"""mergeflow search: spaces checked before any trial, a search that beats the uniform average on held-out data,
trials on a local Ray cluster, and a SIGKILLed search resumed with no trial lost or counted twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergeflow.search.run import accepts
from mergeflow.search.space import Corner, materialize
from tests.conftest import cli, linked, write

TEXT = "the quick brown fox\njumps over the lazy dog\nhello world, merge me!\nalign then merge\n"


@pytest.fixture(scope="module")
def finetunes(tmp_path_factory, digits_finetunes):
    """The shared fine-tunes of a digits ViT on 0-4 (a) and 5-9 (b) from one trained on all (init); the
    held-out digits."""
    from mergeflow.testing import train as tt

    root = linked(digits_finetunes, tmp_path_factory.mktemp("finetunes"))
    tt.save_npz(root / "test.npz", *tt.digits("test"))
    return root


@pytest.fixture(scope="module")
def llamas(toy, tmp_path_factory):
    root = tmp_path_factory.mktemp("llamas")
    a = toy("llama", seed=1)
    b = toy("llama", seed=2, perturb_from=a)
    write(root / "d.txt", TEXT)
    return root, a, b


def llama_search(root, a, b, trials=6, sampler="random", plots=True):
    return write(
        root / "s.yml",
        f"models:\n  a: {a}\n  b: {{path: {b}, params: {{weight: {{search: [0.0, 1.0]}}}}}}\n"
        "merge: {linear: {normalize: false}}\n"
        "overrides: [{match: '*.mlp.*', params: {weight: {search: [0.0, 1.0], knots: 2}}}]\n"
        f"search: {{objective: {{data: d.txt}}, sampler: {sampler}, trials: {trials}, write_best: false, "
        f"plots: {str(plots).lower()}}}\n",
    )


@pytest.mark.slow
def test_search_beats_the_uniform_average_of_two_finetunes(finetunes):
    from mergeflow.search.run import read_search
    from mergeflow.search.trial import Evaluator

    s = write(
        finetunes / "s.yml",
        "models:\n  init: init\n  a: {path: a, params: {weight: {search: [0.0, 1.5]}}}\n"
        "  b: {path: b, params: {weight: {search: [0.0, 1.5]}}}\nbase: init\nmerge: {task_arithmetic: {}}\n"
        "search:\n  objective: [{metric: loss, data: test.npz}, {metric: accuracy, data: test.npz, weight: 0.5}]\n"
        "  sampler: tpe\n  trials: 12\n",
    )
    r = cli("search", str(s), "-o", str(finetunes / "out"), "--workers", "1", "-q")
    assert r.returncode == 0, r.stderr
    out = finetunes / "out"
    report = json.loads((out / "trials.json").read_text())
    assert len(report["trials"]) == 12 and all(t["state"] == "complete" for t in report["trials"])
    sf = read_search(s)
    uniform = Evaluator(str(s), str(finetunes), list(sf.section.objective), "cpu")(
        {"models": {"a": "a", "b": "b"}, "merge": {"linear": {}}}
    )
    assert report["best"]["score"] < uniform["value"], (report["best"], uniform)  # held-out digits 0-9
    import yaml

    best = yaml.safe_load((out / "best.yml").read_text())
    assert (
        "search" not in json.dumps(best)
        and cli("validate", "--recipe-only", str(out / "best.yml")).returncode == 0
    )
    assert (out / "best" / "config.json").is_file() and (out / "history.png").stat().st_size > 1000
    assert len((out / "trials.csv").read_text().splitlines()) == 13


@pytest.mark.parametrize(
    "space,msg",
    [
        ("{search: [1.0, 0.0]}", "a range needs low < high"),
        ("{search: [0, 1, 2]}", "a range is [low, high]"),
        ("{search: [0.0, 1.0], knots: 1}", "knots is an integer from 2 to 64"),
    ],
)
def test_a_bad_space_is_one_clean_error_and_writes_nothing(llamas, space, msg):
    root, a, b = llamas
    s = write(
        root / "bad.yml",
        f"models: {{a: {a}, b: {{path: {b}, params: {{weight: {space}}}}}}}\n"
        "merge: {ties: {density: {search: [0.5, 1.5]}}}\nbase: a\n"
        "search: {objective: {data: d.txt}, trials: 0}\n",
    )
    r = cli("search", str(s), "-o", str(root / "never"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert msg in r.stderr and "models.b.params.weight" in r.stderr and "bad.yml:1:" in r.stderr
    assert "search.trials" in r.stderr  # every problem at once
    assert not (root / "never").exists() and not Path(f"{root / 'never'}.search.db").exists()


def test_a_value_out_of_range_at_a_corner_of_the_space_is_found_before_any_trial(llamas):
    root, a, b = llamas
    s = write(
        root / "corner.yml",
        f"models: {{a: {a}, b: {b}}}\nbase: a\n"
        "merge: {ties: {density: {search: [0.5, 1.5]}}}\nsearch: {objective: {data: d.txt}}\n",
    )
    r = cli("search", str(s), "-o", str(root / "never"), "--dry-run")
    assert r.returncode != 0 and "merge.ties.density" in r.stderr and "Traceback" not in r.stderr


def test_operator_choice_takes_each_operator_its_own_parameters():
    tree = {"merge": {"search": ["ties", "slerp"], "params": {"density": {"search": [0.2, 0.8]}, "t": 0.3}}}
    ties = materialize(tree, Corner("low", 0), accepts)
    slerp = materialize(tree, Corner("high", 1), accepts)
    assert ties == {"merge": {"ties": {"density": 0.2}}} and slerp == {"merge": {"slerp": {"t": 0.3}}}


def test_dry_run_prints_the_space_and_the_cost(llamas):
    root, a, b = llamas
    r = cli("search", str(llama_search(root, a, b)), "-o", str(root / "dry"), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "models.b.params.weight" in r.stdout and "overrides[0].params.weight[1]" in r.stdout
    assert "per trial: reads" in r.stdout and not (root / "dry").exists()


def test_a_foreign_sqlite_file_is_never_taken_as_the_study(llamas):
    root, a, b = llamas
    s = llama_search(root, a, b)
    con = sqlite3.connect(root / "mine.search.db")
    con.execute("CREATE TABLE notes (x TEXT)")
    con.commit()
    con.close()
    before = (root / "mine.search.db").read_bytes()
    r = cli("search", str(s), "-o", str(root / "mine"), "-q")
    assert r.returncode != 0 and "was not written by mergeflow" in r.stderr
    assert (root / "mine.search.db").read_bytes() == before


@pytest.mark.slow
def test_trials_run_on_a_local_ray_cluster_with_two_workers(llamas):
    root, a, b = llamas
    r = cli(
        "search",
        str(llama_search(root, a, b, trials=4, plots=False)),
        "-o",
        str(root / "ray"),
        "--workers",
        "2",
        "-q",
    )
    assert r.returncode == 0, r.stderr
    trials = json.loads((root / "ray" / "trials.json").read_text())["trials"]
    assert len(trials) == 4 and all(t["state"] == "complete" for t in trials)
    assert len({t["worker"] for t in trials}) == 2 and all(
        str(os.getpid()) not in t["worker"] for t in trials
    )


def _states(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
    except sqlite3.OperationalError:  # the study's tables are still being made
        return []
    finally:
        con.close()


@pytest.mark.slow
def test_a_killed_search_resumes_with_no_trial_lost_or_duplicated(llamas):
    root, a, b = llamas
    s = llama_search(root, a, b, trials=4, plots=False)
    out, db = root / "killed", Path(f"{root / 'killed'}.search.db")
    cmd = [sys.executable, "-m", "mergeflow", "search", str(s), "-o", str(out), "--workers", "1", "-q"]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = [st for _n, st in _states(db)] if db.exists() else []
        if states.count("COMPLETE") >= 2 and "RUNNING" in states:  # in the middle of a trial
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {n: st for n, st in _states(db)}
    done_before = {n for n, st in before.items() if st == "COMPLETE"}
    assert len(done_before) >= 2 and not out.exists()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "trials.json").read_text())["trials"]
    numbers = [t["trial"] for t in report]
    assert len(report) == 4 and all(t["state"] == "complete" for t in report)  # the interrupted ones left out
    assert not list(out.glob("*.png"))  # plots: false
    assert done_before <= set(numbers)  # every trial finished before the kill is kept
    running = {n for n, st in before.items() if st == "RUNNING"}
    assert len(running) == 1, before  # killed in the middle of a trial
    assert not running & set(numbers)  # an interrupted trial is not counted; its parameters ran again
    import optuna

    study = optuna.load_study(study_name="mergeflow-search", storage=f"sqlite:///{db}")
    requeued = [t for t in study.trials if "requeued_from" in t.user_attrs]
    assert sorted(t.user_attrs["requeued_from"] for t in requeued) == sorted(running)
    for t in requeued:  # the values it had drawn before the kill (perhaps none yet) are the ones run again
        old = study.trials[t.user_attrs["requeued_from"]].params
        assert {k: t.params[k] for k in old} == old


def test_trials_that_fail_alike_stop_the_search_with_their_error(llamas):
    root, a, b = llamas
    s = (
        llama_search(root, a, b, trials=8)
        .read_text()
        .replace("objective: {data: d.txt}", "objective: {metric: accuracy, data: d.txt}")
    )
    r = cli("search", str(write(root / "acc.yml", s)), "-o", str(root / "acc"), "-q")
    assert (
        r.returncode != 0 and "the first 3 trials all failed" in r.stderr and "gives no accuracy" in r.stderr
    )
    assert "Traceback" not in r.stderr and not (root / "acc").exists()


def test_a_merge_too_large_for_the_trial_memory_is_scored_from_a_scratch_folder(toy, tmp_path):
    from mergeflow.search.section import Objective
    from mergeflow.search.trial import Evaluator

    big = {
        "config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8}
    }  # 50 MB merged
    a, b = toy("llama", seed=1, **big), toy("llama", seed=2, **big)
    write(tmp_path / "d.txt", TEXT)
    recipe = {"models": {"a": str(a), "b": str(b)}, "merge": {"linear": {}}}
    objectives = [Objective(data="d.txt")]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    roomy = Evaluator("s.yml", str(tmp_path), objectives, "cpu")(recipe)
    tight = Evaluator("s.yml", str(tmp_path), objectives, "cpu", 64 << 20, str(scratch))(recipe)  # 64 MiB
    assert (roomy["merged_in"], tight["merged_in"]) == ("memory", "folder")
    assert tight["value"] == pytest.approx(roomy["value"], rel=1e-6), (
        tight,
        roomy,
    )  # the same merge, via a folder
    assert not list(scratch.iterdir())  # the folder is gone


def test_a_lock_file_mergeflow_did_not_make_is_refused_and_kept(llamas):
    root, a, b = llamas
    s = llama_search(root, a, b, trials=1)
    mine = Path(f"{root / 'locked'}.search.db.lock")
    mine.write_text("my notes\n")
    r = cli("search", str(s), "-o", str(root / "locked"), "-q")
    assert r.returncode != 0 and "is not mergeflow's lock file" in r.stderr
    assert mine.read_text() == "my notes\n"
