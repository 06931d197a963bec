"""The plot of an `eval barrier` report: every variant's loss along the path from A to B."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(report: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.2), dpi=120)
    for name, v in report["variants"].items():
        xs = [p["lambda"] for p in v["points"]]
        ax.plot(
            xs,
            [p["loss"] for p in v["points"]],
            marker="o",
            ms=3,
            label=f"{name} (barrier {v['barrier']:.3g})",
        )
    a, b = (Path(str(report.get(k, k.upper()))).name for k in ("a", "b"))
    ax.set_xlabel(f"lambda: (1 - lambda) A + lambda B      (A = {a}, B = {b})")
    data = Path(str(report.get("data", "the data"))).name
    ax.set_ylabel(f"cross-entropy on {data} ({report.get('examples', '?')} ex.)")
    ax.set_title(f"loss along the straight path from A = {a} to B = {b}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8
    )  # beside, never on peaks
    fig.tight_layout()
    fig.savefig(str(path), format="png", metadata={"Software": "mergeflow"})  # marks the file as mergeflow's
    plt.close(fig)
    return Path(path)
