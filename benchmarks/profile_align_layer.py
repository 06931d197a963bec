"""Profile the default alignment steps on one layer of a model pair: where a layer's solve time goes.

    python benchmarks/profile_align_layer.py ANCHOR SCRAMBLED [--layer 1] [--similarity float32] [--solver sketch]

Reads the layer of both models (as ``mergeflow align --align-dtype`` would: canonical form in ``--align-dtype``),
runs permute (FFN and heads), rotate and rescale on it, prints each step's seconds and a cProfile of the
permute step (functions by own time). With ``bench_scale.py --layers 4 --keep`` models, for instance:

    python benchmarks/profile_align_layer.py bench_out/scale4/models/anchor bench_out/scale4/models/scrambled
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from mergeflow.align.catalog import STEPS
from mergeflow.arch.canonical import to_canonical
from mergeflow.arch.spec import arch_spec
from mergeflow.io.reader import ModelReader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("anchor")
    ap.add_argument("scrambled")
    ap.add_argument("--layer", type=int, default=1, help="position in the layer stack")
    ap.add_argument("--similarity", default="float32")
    ap.add_argument("--solver", default="sketch")
    ap.add_argument("--align-dtype", default="float32")
    ap.add_argument("--top", type=int, default=25, help="profile rows to print")
    args = ap.parse_args()
    ra, rb = ModelReader("anchor", args.anchor), ModelReader("scrambled", args.scrambled)
    spec = arch_spec(ra.config, ra.tensors, {n: t.shape for n, t in ra.tensors.items()})
    layer = spec.layers[args.layer]
    names = [n for _r, n in layer.names]
    dtype = getattr(torch, args.align_dtype)
    anchor = to_canonical(spec, layer, {n: ra.read(n) for n in names}, dtype)
    local = to_canonical(spec, layer, {n: rb.read(n) for n in names}, dtype)
    steps = [
        ("permute", {"ffn": True, "heads": True, "solver": args.solver, "similarity": args.similarity}),
        ("rotate", {"qk": True, "vo": True}),
        ("rescale", {}),
    ]
    prof = cProfile.Profile()
    for name, params in steps:
        info = STEPS[name]
        p = info.params.model_validate(params)
        start = time.perf_counter()
        if name == "permute":
            prof.enable()
        info.fn(local, anchor, spec.geometry, p, None)
        if name == "permute":
            prof.disable()
        print(f"{name}: {time.perf_counter() - start:.2f} s")
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
