"""The tokenizer section: union/base/model vocabularies, rows re-indexed by token text, chat templates."""

from __future__ import annotations

import json

import pytest
import torch

from mergeflow.testing.models import CHARS, build, save_tokenizer
from tests.conftest import cli, write
from tests.helpers import tensor

ROWS = ("model.embed_tokens.weight", "lm_head.weight")
WORDS = ("hello", "world")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """a: the char tokenizer; b: the same characters in another order (a few left out), two whole words
    and a special token, so ids disagree and each model has tokens the other lacks."""
    root = tmp_path_factory.mktemp("tok")
    a = build("llama", root / "a", seed=0)
    b = build("llama", root / "b", seed=1, tokenizer=False)
    save_tokenizer(
        b, chars=[c for c in reversed(CHARS) if c not in "xyz"], words=WORDS, special=("<|im_start|>",)
    )
    return a, b


def vocab_of(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path)).get_vocab()


def expected_row(models, token, name, mean=True):
    rows = [tensor(p, name)[v[token]] for p, v in models if token in v]
    return torch.stack(rows).mean(0) if mean else rows[0]


def run(tmp_path, body, *args):
    recipe = write(tmp_path / "r.yml", body)
    res = cli("run", str(recipe), str(tmp_path / "out"), "-q", *args)
    assert res.returncode == 0, res.stderr
    return tmp_path / "out"


def test_union_rows_token_by_token(tmp_path, pair):
    a, b = pair
    out = run(tmp_path, f"models: {{a: {a}, b: {b}}}\nmerge: linear\ntokenizer: union\n")
    va, vb, vo = vocab_of(a), vocab_of(b), vocab_of(out)
    assert all(vo[t] == i for t, i in va.items())  # the first model's ids are kept
    assert set(vo) == set(va) | set(vb)
    assert len(vo) == len(set(va) | set(vb))
    for name in ROWS:
        got = tensor(out, name)
        assert got.shape[0] == len(vo)
        for (
            tok,
            i,
        ) in vo.items():  # both models' rows averaged where both know the token, else the one that does
            torch.testing.assert_close(got[i], expected_row([(a, va), (b, vb)], tok, name), msg=tok)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == len(vo)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    for text in (
        "hello world, how are you?",
        "<|im_start|>xyz hello",
    ):  # text of either vocabulary round-trips
        assert tok.decode(tok(text)["input_ids"]) == text
    assert tok("<|im_start|>")["input_ids"] == [vo["<|im_start|>"]]
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model(torch.tensor([tok("hello")["input_ids"]])).logits.shape[-1] == len(vo)


def test_plan_describes_the_tokenizer(tmp_path, pair):
    a, b = pair
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nmerge: linear\ntokenizer: union\nchat_template: chatml\n",
    )
    res = cli("plan", str(rec))
    assert res.returncode == 0, res.stderr
    assert "tokenizer: union, 40 tokens (40 rows)" in res.stdout and "b adds 'hello', 'world'" in res.stdout
    assert "chat template: chatml" in res.stdout
    assert (
        "chatml writes <|im_end|>, which the output tokenizer does not have" in res.stderr
    )  # b has <|im_start|>


def test_base_rows_win_padding_and_token_sources(tmp_path, pair):
    a, b = pair
    out = run(
        tmp_path,
        f"""\
models: {{a: {a}, b: {b}}}
base: b
merge: {{task_arithmetic: {{}}}}
tokenizer:
  source: union
  pad_to_multiple_of: 16
  tokens:
    "<|im_end|>": {{source: {{kind: model_token, model: a, token: "</s>"}}}}
    "a": {{source: a, force: true}}
    "b": {{source: {{kind: zero}}, force: true}}
""",
    )
    va, vb, vo = vocab_of(a), vocab_of(b), vocab_of(out)
    assert all(vo[t] == i for t, i in vb.items())  # the base's ids are kept
    assert "<|im_end|>" in vo
    for name in ROWS:
        ta, tb, got = tensor(a, name), tensor(b, name), tensor(out, name)
        assert got.shape[0] % 16 == 0 and got.shape[0] >= len(vo)
        assert not got[len(vo) :].any()  # padding rows are zeros
        torch.testing.assert_close(got[vo["<|im_end|>"]], ta[va["</s>"]])  # every model gets a's row of </s>
        torch.testing.assert_close(got[vo["a"]], ta[va["a"]])  # forced: a's row for both
        assert not got[vo["b"]].any()
        # a char only a has: both get a's row, so base + (a - base) = a's row; shared tokens: task arithmetic
        torch.testing.assert_close(got[vo["x"]], ta[va["x"]])
        torch.testing.assert_close(got[vo["q"]], ta[va["q"]])
        torch.testing.assert_close(got[vo["hello"]], tb[vb["hello"]])


def test_source_model_and_chat_templates(tmp_path, pair):
    a, b = pair
    out = run(
        tmp_path,
        f"models: {{a: {a}, b: {b}}}\nmerge: linear\ntokenizer: {{source: b}}\nchat_template: chatml\n",
    )
    vb, vo = vocab_of(b), vocab_of(out)
    assert vo == vb
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in cfg["chat_template"] and not (out / "chat_template.jinja").exists()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_auto_template_is_the_most_common(tmp_path, pair):
    a, b = pair
    import shutil

    c = tmp_path / "c"
    shutil.copytree(a, c)
    for p, tpl in ((a, None), (b, "{{ 'B' }}"), (c, "{{ 'C' }}")):
        if tpl is not None:
            cfgp = p / "tokenizer_config.json"
            if p is b:
                b2 = tmp_path / "b2"
                shutil.copytree(b, b2)
                cfgp = b2 / "tokenizer_config.json"
            cfg = json.loads(cfgp.read_text())
            cfg["chat_template"] = tpl
            cfgp.write_text(json.dumps(cfg))
    b2 = tmp_path / "b2"
    out = run(
        tmp_path,
        f"models: {{a: {a}, b: {b2}, c: {c}, d: {b2}}}\nmerge: linear\nchat_template: auto\n"
        "output: {tokenizer: a}\n",
    )
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == "{{ 'B' }}"


@pytest.mark.parametrize(
    ("body", "frag"),
    [
        ("tokenizer: {source: nobody}\n", "tokenizer.source: 'nobody' is not a key of models"),
        ("tokenizer: union\noutput: {tokenizer: a}\n", "not both"),
        ("chat_template: chatmlx\n", "neither a template name"),
        (
            "tokenizer: {tokens: {x: {source: {kind: model_token, model: a}}}}\n",
            "exactly one of token or token_id",
        ),
    ],
)
def test_bad_tokenizer_sections(tmp_path, pair, body, frag):
    a, b = pair
    recipe = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {b}}}\nmerge: linear\n{body}")
    res = cli("validate", str(recipe), "--recipe-only")
    assert res.returncode == 2 and frag in res.stderr and "Traceback" not in res.stderr


def test_mergekit_tokenizer_block_converts(tmp_path, pair):
    a, b = pair
    mk = write(
        tmp_path / "mk.yml",
        f"""\
models:
  - model: {a}
  - model: {b}
merge_method: linear
parameters: {{weight: 1.0}}
dtype: float32
tokenizer:
  source: union
  pad_to_multiple_of: 8
  tokens:
    "<|im_end|>": {{source: {{kind: model_token, model: {a}, token: "</s>"}}}}
chat_template: chatml
""",
    )
    out = tmp_path / "out"
    res = cli("run", str(mk), str(out), "-q")
    assert res.returncode == 0, res.stderr
    vo = vocab_of(out)
    assert "<|im_end|>" in vo and tensor(out, ROWS[0]).shape[0] % 8 == 0
    assert "<|im_start|>" in json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
