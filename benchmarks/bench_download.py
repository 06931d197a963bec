"""Benchmark: a merge of Hub models that downloads as it merges, against a stand-in Hub throttled to a
fixed rate (tests/hub_server.py on 127.0.0.1; nothing contacts the real Hub).

    python benchmarks/bench_download.py [--params 0.1e9] [--models 3] [--rate 40MB] [--op ties]

Builds Llama-shaped random bfloat16 checkpoints once under --workdir, serves them throttled to --rate
bytes per second per download, and measures in one run, side by side:
  download only   huggingface_hub's snapshot_download of the weights into an empty cache, one file at a
                  time (the way mergeflow fetches them)
  merge only      `mergeflow run` with every shard already in the cache (HF_HUB_OFFLINE=1)
  streamed        `mergeflow run` from an empty cache: shards fetched in plan order while merging
  disk budget     the same with --disk-budget of two shards per model (downloads deleted as they are passed)
and prints wall times, peak RSS and the ratios streamed / (download + merge) and streamed / max(...);
for the streamed runs also where the time went, from mergeflow's own summary: before the run starts
(interpreter, imports, pre-flight), downloading, and merging after the last shard arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_merge import llama_dims, make_checkpoint  # noqa: E402

from tests.hub_server import FakeHub  # noqa: E402


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> dict:
    res = subprocess.run(
        [sys.executable, str(HERE / "_peak.py"), *argv], env=env, cwd=cwd, capture_output=True, text=True
    )
    stats = json.loads(res.stderr.strip().splitlines()[-1])
    if stats["rc"] != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{res.stderr}")
    stats["stdout"] = res.stdout
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=0.1e9, help="parameters per model (default 0.1e9)")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--rate", default="40MB", help="bytes per second per download (default 40MB)")
    ap.add_argument("--op", default="ties", help="merge operator: linear or ties (default ties)")
    ap.add_argument("--shard", default="100MB", help="shard size of the checkpoints (default 100MB)")
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/download"))
    args = ap.parse_args()
    from pydantic import ByteSize, TypeAdapter

    rate = int(TypeAdapter(ByteSize).validate_python(args.rate))
    shard = int(TypeAdapter(ByteSize).validate_python(args.shard))
    dims = llama_dims(args.params)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = [work / f"m{i}-{args.params:g}" for i in range(args.models)]
    for i, m in enumerate(models):
        make_checkpoint(m, dims, seed=i, shard_bytes=shard)
    hub = FakeHub(rate=rate)
    for i, m in enumerate(models):
        hub.add(f"bench/m{i}", m)
    weights = sum(
        len(d) for r in hub.repos.values() for f, d in r.files.items() if f.endswith(".safetensors")
    )
    server, url = hub.start()
    names = [f"m{i}" for i in range(args.models)]
    merge = "{ties: {density: 0.5}}\nbase: m0" if args.op == "ties" else "linear"
    recipe = work / "recipe.yml"
    recipe.write_text("models:\n" + "".join(f"  {n}: bench/{n}\n" for n in names) + f"merge: {merge}\n")
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_TOKEN", None)
    rows = []
    try:
        # download only: the weights, one file at a time, into an empty cache
        cache = work / "cache-download"
        shutil.rmtree(cache, ignore_errors=True)
        code = (
            "import sys\nfrom huggingface_hub import snapshot_download\n"
            "for r in sys.argv[1:]:\n"
            f"    snapshot_download(r, cache_dir={str(cache)!r}, max_workers=1)\n"
        )
        rows.append(
            ("download only", timed([sys.executable, "-c", code, *[f"bench/{n}" for n in names]], env, work))
        )
        # merge only: everything cached, nothing asked of the network
        out = work / "out"
        offline = {**env, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        argv = [sys.executable, "-m", "mergeflow", "run", str(recipe), str(out), "--force"]
        rows.append(("merge only (cached)", timed(argv, offline, work)))
        # streamed: an empty cache, shards fetched while merging
        for label, extra in (
            ("streamed", []),
            ("streamed, --disk-budget", ["--disk-budget", str((args.models + 1) * shard)]),
        ):
            fresh = work / "cache-stream"
            shutil.rmtree(fresh, ignore_errors=True)
            rows.append((label, timed([*argv, *extra], {**env, "HF_HUB_CACHE": str(fresh)}, work)))
            shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    finally:
        server.shutdown()
    down, merged = rows[0][1]["seconds"], rows[1][1]["seconds"]
    print(
        f"{args.models} Llama-shaped models of {args.params:g} parameters (bfloat16, {shard / 1e6:.0f} MB shards), "
        f"{weights / 2**30:.2f} GiB of weights served at {rate / 1e6:.0f} MB/s per download; operator {args.op}"
    )
    print(f"{'run':28} {'wall s':>8} {'peak RSS':>10} {'/ (dl + merge)':>15} {'/ max(dl, merge)':>17}")
    for label, st in rows:
        ratio = (
            f"{st['seconds'] / (down + merged):15.2f} {st['seconds'] / max(down, merged):17.2f}"
            if label.startswith("streamed")
            else f"{'':15} {'':17}"
        )
        print(f"{label:28} {st['seconds']:8.1f} {st['peak_rss_bytes'] / 2**20:8.0f} MiB {ratio}")
        run = re.search(r" in ([0-9.]+) s; peak RSS", st["stdout"])
        fetched = re.search(r"^(downloaded .* in ([0-9.]+) s.*)$", st["stdout"], re.M)
        if run and fetched:
            inside, dl = float(run[1]), float(fetched[2])
            print(f"{'':28} {fetched[1]}")
            print(
                f"{'':28} {st['seconds'] - inside:.1f} s before the run (imports, pre-flight), {dl:.1f} s "
                f"downloading, {inside - dl:.1f} s merging after the last shard"
            )


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"(benchmark took {time.perf_counter() - start:.0f} s)")
