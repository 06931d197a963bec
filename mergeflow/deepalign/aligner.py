"""An aligner on disk: ``aligner.safetensors`` (the encoder's weights) and ``aligner.json`` (its shape, the
settings it was trained with, its training log's last values)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mergeflow.deepalign.encoder import DeepAlign
from mergeflow.errors import InputError

WEIGHTS, CONFIG = "aligner.safetensors", "aligner.json"


def save_aligner(folder: Path, encoder: DeepAlign, info: dict[str, Any]) -> list[str]:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    body = {"written_by": "mergeflow", "kind": "deep-align", "family": "mlp", **encoder.config(), **info}
    (folder / CONFIG).write_text(json.dumps(body, indent=2) + "\n")
    return [WEIGHTS, CONFIG]


def load_aligner(path: str | Path, sizes: Sequence[int] | None = None) -> DeepAlign:
    """The encoder saved in ``path``; ``sizes``: the layer sizes of the models it will align (checked)."""
    from safetensors.torch import load_file

    p = Path(path)
    try:
        config = json.loads((p / CONFIG).read_text())
        state = load_file(str(p / WEIGHTS))
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: not an aligner made by mergeflow learn-aligner ({exc})") from None
    if config.get("kind") != "deep-align":
        raise InputError(f"{p / CONFIG}: not a Deep-Align aligner")
    if sizes is not None and list(sizes) != config["sizes"]:
        raise InputError(f"{p}: trained for layer sizes {config['sizes']}, the models have {list(sizes)}")
    encoder = DeepAlign(config["sizes"], config["channels"], config["depth"], config["features"])
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{p / WEIGHTS}: does not match {CONFIG} ({str(exc).splitlines()[0]})") from None
    return encoder.eval()
