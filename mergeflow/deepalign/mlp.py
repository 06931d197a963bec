"""Plain MLP checkpoints (the ``mlp`` family): an ``nn.Sequential`` of Linear layers with one activation
between them, saved as safetensors beside a small spec file (``config.json``)::

    {"model_type": "mlp", "activation": "relu", "layers": ["0", "2", "4", "6"]}

``layers`` names the Linear modules in order (their tensors are ``NAME.weight`` and ``NAME.bias``); the sizes
come from the weights' shapes. The symmetry: the units of each hidden layer may be permuted (rows of its
weight and bias, columns of the next weight) without changing the function."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mergeflow.errors import InputError

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "tanh": torch.tanh,
}

Weights = list[tuple[torch.Tensor, torch.Tensor]]  # per Linear layer: (weight [out, in], bias [out])


@dataclass(frozen=True)
class MLPSpec:
    layers: tuple[str, ...]  # module names of the Linear layers, input to output
    sizes: tuple[int, ...]  # d_0 (inputs) ... d_L (outputs)
    activation: str = "relu"

    @property
    def hidden(self) -> range:
        """Indices of the hidden neuron layers (1 .. L-1): each one permutation."""
        return range(1, len(self.sizes) - 1)

    def names(self) -> list[str]:
        return [f"{n}.{p}" for n in self.layers for p in ("weight", "bias")]

    def config(self) -> dict[str, object]:
        return {"model_type": "mlp", "activation": self.activation, "layers": list(self.layers)}


def is_mlp(config: Mapping[str, object] | None) -> bool:
    return bool(config) and config.get("model_type") == "mlp"  # type: ignore[union-attr]


def mlp_spec(config: Mapping[str, object], shapes: Mapping[str, Sequence[int]], where: str = "") -> MLPSpec:
    """The spec of an MLP checkpoint from its config and tensor shapes; a clear error when they disagree."""
    at = f"{where}: " if where else ""
    layers = config.get("layers")
    act = config.get("activation", "relu")
    if not isinstance(layers, list) or len(layers) < 2 or not all(isinstance(n, str) for n in layers):
        raise InputError(f"{at}config.json: 'layers' must list the Linear layers' names (two or more)")
    if act not in ACTIVATIONS:
        raise InputError(f"{at}config.json: activation {act!r} is not one of {', '.join(ACTIVATIONS)}")
    sizes: list[int] = []
    for i, n in enumerate(layers):
        w, b = shapes.get(f"{n}.weight"), shapes.get(f"{n}.bias")
        if w is None or b is None or len(w) != 2 or list(b) != [w[0]]:
            raise InputError(f"{at}layer {n!r} needs {n}.weight [out, in] and {n}.bias [out]")
        if i == 0:
            sizes.append(int(w[1]))
        elif int(w[1]) != sizes[-1]:
            raise InputError(f"{at}{n}.weight takes {w[1]} inputs, the layer before gives {sizes[-1]}")
        sizes.append(int(w[0]))
    extra = sorted(set(shapes) - {f"{n}.{p}" for n in layers for p in ("weight", "bias")})
    if extra:
        raise InputError(f"{at}tensors outside the listed layers: {', '.join(extra[:5])}")
    return MLPSpec(tuple(layers), tuple(sizes), str(act))


def as_weights(spec: MLPSpec, state: Mapping[str, torch.Tensor]) -> Weights:
    return [(state[f"{n}.weight"], state[f"{n}.bias"]) for n in spec.layers]


def as_state(spec: MLPSpec, weights: Weights) -> dict[str, torch.Tensor]:
    out = {}
    for n, (w, b) in zip(spec.layers, weights, strict=True):
        out[f"{n}.weight"], out[f"{n}.bias"] = w, b
    return out


def forward(weights: Weights, x: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """Logits of the MLP on inputs ``x`` [N, d_0] (flattened)."""
    act = ACTIVATIONS[activation]
    h = x.reshape(x.shape[0], -1).to(weights[0][0].dtype)
    for i, (w, b) in enumerate(weights):
        h = h @ w.T + b
        if i < len(weights) - 1:
            h = act(h)
    return h


def hidden_activations(weights: Weights, x: torch.Tensor, activation: str = "relu") -> list[torch.Tensor]:
    """Post-activation values of every hidden layer: [N, d_j] for j = 1 .. L-1."""
    act = ACTIVATIONS[activation]
    h, out = x.reshape(x.shape[0], -1).to(weights[0][0].dtype), []
    for w, b in weights[:-1]:
        h = act(h @ w.T + b)
        out.append(h)
    return out


def permute(weights: Weights, perms: Sequence[torch.Tensor]) -> Weights:
    """The same function with hidden layer j's units reordered: new unit c = old unit perms[j-1][c]."""
    out = []
    for i, (w, b) in enumerate(weights):
        if i < len(perms):  # rows of this layer
            w, b = w[perms[i]], b[perms[i]]
        if i > 0:  # columns: the layer before's units
            w = w[:, perms[i - 1]]
        out.append((w, b))
    return out


def soft_permute(weights: Weights, mats: Sequence[torch.Tensor]) -> Weights:
    """``permute`` with (doubly stochastic) matrices: new = M @ old on rows, old @ M^T on columns."""
    out = []
    for i, (w, b) in enumerate(weights):
        if i < len(mats):
            w, b = mats[i] @ w, mats[i] @ b
        if i > 0:
            w = w @ mats[i - 1].T
        out.append((w, b))
    return out


def lerp(a: Weights, b: Weights, t: float | torch.Tensor) -> Weights:
    return [(wa + t * (wb - wa), ba + t * (bb - ba)) for (wa, ba), (wb, bb) in zip(a, b, strict=True)]


def mlp_inputs(x: object, spec: MLPSpec, where: str) -> torch.Tensor:
    """A data file's float ``x`` as MLP inputs [N, d_0]; a clear error when it is not that."""
    import numpy as np

    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise InputError(f"{where}: an mlp reads float inputs ('x' of a .npz)")
    flat = torch.from_numpy(x).reshape(len(x), -1)
    if flat.shape[1] != spec.sizes[0]:
        raise InputError(f"{where}: examples have {flat.shape[1]} features, the model takes {spec.sizes[0]}")
    return flat


def load_mlp(path: str | Path) -> tuple[MLPSpec, Weights]:
    """Spec and float32 weights of an MLP checkpoint folder."""
    from safetensors.torch import load_file

    p = Path(path)
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{p / 'config.json'}: not a readable MLP spec ({exc})") from None
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise InputError(f"{p}: no .safetensors file")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    spec = mlp_spec(config, {k: tuple(v.shape) for k, v in state.items()}, str(p))
    return spec, [(w.float(), b.float()) for w, b in as_weights(spec, state)]


def save_mlp(path: str | Path, spec: MLPSpec, weights: Weights) -> Path:
    """Write an MLP checkpoint folder (a new folder: refuses one that exists)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.mkdir(parents=True, exist_ok=False)
    state = {k: v.detach().contiguous().float() for k, v in as_state(spec, weights).items()}
    save_file(state, str(p / "model.safetensors"), metadata={"format": "pt"})
    (p / "config.json").write_text(json.dumps(spec.config(), indent=2) + "\n")
    return p
