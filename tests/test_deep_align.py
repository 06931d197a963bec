"""Deep-Align and the mlp family: the symmetry and its optimisation baselines, the encoder's equivariance, a
trained aligner recovering planted permutations of held-out zoo models, learn-aligner's resume after a kill,
and the learned permute step in a recipe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from mergeflow.deepalign.encoder import DeepAlign, as_batch, similarities
from mergeflow.deepalign.matching import activation_matching, weight_matching
from mergeflow.deepalign.mlp import forward, hidden_activations, load_mlp, permute
from mergeflow.deepalign.pairs import Augment, random_perms, supervised_pair
from mergeflow.deepalign.train import Settings, predict, train
from mergeflow.testing.train import save_npz
from mergeflow.testing.zoo import build_zoo, digits_flat
from tests.conftest import cli, write
from tests.helpers import clean_failure

SIZES = (64, 24, 24, 24, 10)  # three hidden layers: the middle one sits between two permuted layers
SMALL = Settings(steps=60, batch=4, channels=8, depth=2, features=16, save_every=1000)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    paths = build_zoo(root / "zoo", 6, SIZES, epochs=2)
    x, y = digits_flat("train")
    save_npz(root / "digits.npz", x.numpy(), y.numpy())
    return root, paths, [load_mlp(p)[1] for p in paths]


@pytest.fixture(scope="module")
def aligner(zoo, tmp_path_factory):
    """An aligner trained on the first four zoo models (the last two are held out)."""
    _root, _paths, nets = zoo
    encoder, log = train(nets[:4], digits_flat("train"), SMALL, tmp_path_factory.mktemp("aligner"))
    first, last = log[:10], log[-10:]
    for loss in ("supervised", "reconstruction"):  # it learned (mean of the first ten steps vs the last ten)
        assert sum(e[loss] for e in last) < sum(e[loss] for e in first), loss
    return encoder


def _recovered(perms, target):
    return sum(float((p == q).float().mean()) for p, q in zip(perms, target, strict=True)) / len(target)


def test_a_hidden_permutation_keeps_the_function_and_both_matchings_undo_it(zoo):
    _root, _paths, nets = zoo
    a = nets[0]
    perms = random_perms(SIZES, torch.Generator().manual_seed(0))
    b = permute(a, perms)
    x, _y = digits_flat("test")
    torch.testing.assert_close(forward(b, x), forward(a, x), rtol=1e-5, atol=1e-5)
    assert any(not torch.equal(w1, w2) for (w1, _), (w2, _) in zip(a, b, strict=True))
    back = permute(b, weight_matching(a, b).perms)
    assert all(
        torch.equal(w1, w2) and torch.equal(b1, b2) for (w1, b1), (w2, b2) in zip(a, back, strict=True)
    )
    # activation matching puts back every unit that is active on the data (a dead ReLU unit has no signal)
    live = [h.std(0) > 0 for h in hidden_activations(a, x)]
    found = activation_matching(a, b, x)
    for perm, planted, alive in zip(found, perms, live, strict=True):
        assert alive.float().mean() > 0.5 and torch.equal(
            planted[perm][alive], torch.arange(len(perm))[alive]
        )


def test_weight_matching_never_lowers_its_objective_and_accepts_a_start(zoo):
    _root, _paths, nets = zoo
    a, b = nets[0], nets[1]
    from mergeflow.deepalign.matching import identity, objective

    plain = weight_matching(a, b)
    assert plain.objective > objective(a, b, identity(SIZES))
    again = weight_matching(a, b, init=plain.perms)  # from its own optimum: nothing left to change
    assert again.iterations == 1 and again.objective == pytest.approx(plain.objective)


def test_the_encoder_is_equivariant_and_swapping_the_inputs_transposes(zoo):
    _root, _paths, nets = zoo
    a, b = nets[0], nets[1]
    torch.manual_seed(0)
    enc = DeepAlign(list(SIZES), channels=8, depth=2, features=16).eval()
    gen = torch.Generator().manual_seed(1)
    pa, pb = random_perms(SIZES, gen), random_perms(SIZES, gen)
    with torch.no_grad():
        s = similarities(enc, as_batch([a]), as_batch([b]))
        s_b = similarities(enc, as_batch([a]), as_batch([permute(b, pb)]))
        s_a = similarities(enc, as_batch([permute(a, pa)]), as_batch([b]))
        s_swap = similarities(enc, as_batch([b]), as_batch([a]))
    for j in range(len(s)):
        torch.testing.assert_close(s_b[j][0], s[j][0][:, pb[j]], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s_a[j][0], s[j][0][pa[j]], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s_swap[j][0], s[j][0].T, rtol=1e-4, atol=1e-5)
    # the predicted alignment follows: the aligned model is the same whichever order B's units came in
    one = permute(b, predict(enc, a, b))
    two = permute(permute(b, pb), predict(enc, a, permute(b, pb)))
    assert all(torch.equal(w1, w2) for (w1, _), (w2, _) in zip(one, two, strict=True))


def test_a_trained_aligner_recovers_planted_permutations_of_held_out_models(zoo, aligner):
    _root, _paths, nets = zoo
    gen = torch.Generator().manual_seed(7)
    exact, noisy = [], []
    for a in nets[4:]:
        b, target = supervised_pair(a, SIZES, Augment(0, 0, 0), gen)
        exact.append(_recovered(predict(aligner, a, b), target))
        for _ in range(3):
            b, target = supervised_pair(a, SIZES, Augment(noise=0.05, dropout=0.05, rescale=0.2), gen)
            noisy.append(_recovered(predict(aligner, a, b), target))
    assert exact == [1.0, 1.0]
    assert sum(noisy) / len(noisy) >= 0.75, noisy  # chance: 1/24


def test_learn_aligner_resumes_after_a_kill_to_the_same_aligner(zoo, tmp_path):
    root, _paths, _nets = zoo
    args = [
        "learn-aligner", str(root / "zoo"), "--data", str(root / "digits.npz"), "--steps", "24", "--batch", "4",
        "--channels", "4", "--depth", "2", "--save-every", "3", "--held-out", "2", "-q",
    ]  # fmt: skip
    ref = tmp_path / "ref"
    done = cli(*args, "-o", str(ref))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed"
    partial = tmp_path / ".killed.mergeflow-partial"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mergeflow", *args, "-o", str(out)], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (partial / "checkpoint.pt").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (partial / "checkpoint.pt").exists() and not out.exists()
    step = torch.load(partial / "checkpoint.pt", weights_only=False)["step"]
    assert 0 < step < 24
    res = cli(*args, "-o", str(out), "--resume")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == [".mergeflow", "aligner.json", "aligner.safetensors"]
    got, want = load_file(str(out / "aligner.safetensors")), load_file(str(ref / "aligner.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_a_recipe_permutes_by_the_learned_aligner_then_merges(zoo, aligner, tmp_path):
    root, paths, nets = zoo
    from mergeflow.deepalign.aligner import save_aligner

    (tmp_path / "al").mkdir()
    save_aligner(tmp_path / "al", aligner, {})
    recipe = write(
        tmp_path / "r.yml",
        f"models: {{a: {paths[4]}, b: {paths[5]}}}\nanchor: a\n"
        "align: [{permute: {method: learned, aligner: al}}]\nmerge: linear\n",
    )
    res = cli("run", str(recipe), str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
    merged = load_mlp(tmp_path / "out")[1]
    aligned = permute(nets[5], predict(aligner, nets[4], nets[5]))
    for (w, b), (wa, ba), (wb, bb) in zip(merged, nets[4], aligned, strict=True):
        torch.testing.assert_close(w, (wa + wb) / 2)
        torch.testing.assert_close(b, (ba + bb) / 2)
    assert (tmp_path / "out" / "alignment.json").is_file()


def test_mlp_alignment_refuses_what_it_cannot_do(zoo, toy, tmp_path, capsys):
    root, paths, _nets = zoo
    m = f"models: {{a: {paths[0]}, b: {paths[1]}}}\nanchor: a\nmerge: linear\n"
    cases = [
        (m + "align: [rotate]\n", "its only symmetry is a permutation of hidden units"),
        (m + "align: [{permute: {method: learned}}]\n", "method: learned needs 'aligner: PATH'"),
        (m + "align: [{permute: {method: learned, aligner: nowhere}}]\n", "aligner"),
        (
            f"models: {{a: {toy('llama')}, b: {toy('llama', seed=1)}}}\nanchor: a\nmerge: linear\n"
            f"align: [{{permute: {{method: learned, aligner: {tmp_path}}}}}]\n",
            "learned aligners (Deep-Align) are made for mlp models",
        ),
    ]
    for i, (text, msg) in enumerate(cases):
        out = tmp_path / f"out{i}"
        err = clean_failure(capsys, ["run", str(write(tmp_path / f"r{i}.yml", text)), str(out)], out)
        assert msg in err, err


def test_learn_aligner_refuses_a_zoo_of_mixed_shapes(zoo, tmp_path, capsys):
    root, paths, _nets = zoo
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    os.symlink(paths[0], mixed / "one")
    build_zoo(mixed, 1, (64, 8, 10), epochs=1)
    out = tmp_path / "al"
    err = clean_failure(
        capsys, ["learn-aligner", str(mixed), "--data", str(root / "digits.npz"), "-o", str(out), "-q"], out
    )
    assert "layer sizes" in err


def test_a_weight_matched_mlp_run_prints_no_cost_note(zoo, tmp_path, monkeypatch):
    """The cost note reads transformer layouts; an mlp model has none: no note, and never a failed run."""
    from mergeflow.graph import cost_notes

    monkeypatch.setattr(cost_notes, "NOTE_FROM", 1)
    _root, paths, _nets = zoo
    recipe = write(
        tmp_path / "r.yml",
        f"models: {{a: {paths[4]}, b: {paths[5]}}}\nanchor: a\nalign: [{{permute: {{}}}}]\nmerge: linear\n",
    )
    res = cli("run", str(recipe), str(tmp_path / "out"), "--device", "cpu")
    assert res.returncode == 0 and "note:" not in res.stderr, res.stderr
