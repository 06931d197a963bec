"""How long `mergeflow align` takes to stop after Ctrl-C (SIGINT) in the middle of an alignment, per --device.

    python benchmarks/bench_interrupt.py ANCHOR MODEL [--devices cpu,cpu:cpu] [--after 20] [--workdir DIR]

Starts `mergeflow align MODEL --anchor ANCHOR --align-dtype float32` once per device setting (``:`` separates
them; ``cpu,cpu`` is two lanes), sends SIGINT ``--after`` seconds in, and prints the seconds from the signal to
the process's exit, its exit code (130: interrupted; a negative one: killed by that signal, e.g. -6 an abort),
whether the output folder stayed absent and the first words of its last line. The partial output it leaves (`.NAME.mergeflow-partial`, kept for --resume) is deleted afterwards: the outputs go to a
fresh folder under --workdir that this script makes and removes. With `bench_scale.py --layers 4 --keep`
models, for instance:

    python benchmarks/bench_interrupt.py bench_out/scale4/models/anchor bench_out/scale4/models/scrambled
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("anchor")
    ap.add_argument("model")
    ap.add_argument("--devices", default="cpu,cpu:cpu", help="device settings to try, separated by ':'")
    ap.add_argument("--after", type=float, default=20.0, help="seconds before the SIGINT")
    ap.add_argument(
        "--workdir", default=None, help="where the fresh output folder is made (default: $TMPDIR)"
    )
    args = ap.parse_args()
    print("| --device | SIGINT after s | exit after s | exit code | output absent | last line of stderr |")
    print("|---|---|---|---|---|---|")
    for device in args.devices.split(":"):
        work = Path(tempfile.mkdtemp(prefix="mergeflow-interrupt-", dir=args.workdir))
        out = work / "aligned"
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mergeflow", "align", args.model, "--anchor", args.anchor, "-o", str(out),
                 "--device", device, "--align-dtype", "float32", "-q"],
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            time.sleep(args.after)
            proc.send_signal(signal.SIGINT)
            sent = time.perf_counter()
            err = proc.communicate()[1].strip().splitlines()
            took = time.perf_counter() - sent
            said = (
                err[-1].split(";")[0] if err else ""
            )  # e.g. "interrupted" (the rest names the temporary folder)
            print(
                f"| {device} | {args.after:g} | {took:.1f} | {proc.returncode} | {not out.exists()} | {said} |",
                flush=True,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
