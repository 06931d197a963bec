"""``mergeflow stats``: run a model over a dataset and write its statistics file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mergeflow.errors import InputError
from mergeflow.io.ownership import atomic_write, lexical
from mergeflow.io.stats_file import write_stats
from mergeflow.progress import SILENT, Progress
from mergeflow.stats.data import batches, load_data
from mergeflow.stats.gram import in_width, linear_layers
from mergeflow.stats.gram_passes import averaged, plan_groups, write_groups
from mergeflow.stats.model import Loaded, check_fits, load_model, max_length_for, stored_names, weight_bytes
from mergeflow.stats.parallel import process_group


def compute_stats(
    model_dir: str | Path,
    data_path: str | Path,
    kind: str,
    out: str | Path,
    device: torch.device,
    batch_size: int = 16,
    max_length: int | None = None,
    max_examples: int | None = None,
    samples: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
    max_memory: int | None = None,
) -> dict[str, object]:
    from mergeflow.io.ownership import check_file_target

    check_file_target(out, [Path(model_dir), Path(data_path)], "statistics file")
    if Path(out).suffix != ".safetensors":  # said before the work, not after
        raise InputError(f"{out}: name statistics files *.safetensors")
    need = 2 * weight_bytes(model_dir) if kind == "fisher" and max_memory is not None else 0
    if max_memory is not None and need > max_memory:
        raise InputError(
            f"{model_dir}: fisher statistics need the weights and their gradients in memory, {need / 2**30:.2f} "
            f"GiB in float32, more than --max-memory {max_memory / 2**30:.2f} GiB; raise it, or take gram "
            "statistics (forward passes only, placed under the budget)"
        )
    group = process_group(device)  # several processes under torchrun / accelerate launch: a block each
    with group.working():  # a failure inside skips the meeting at exit (the others would wait for it)
        device = group.device
        data = load_data(data_path).subset(max_examples)
        # Grams do not depend on a head
        loaded = load_model(model_dir, device, headless=kind == "gram", max_memory=max_memory)
        check_fits(loaded, data, model_dir)
        groups = plan_groups(loaded, model_dir, group) if kind == "gram" else [[]]  # passes over the data
        max_length = max_length_for(
            loaded, data, max_length
        )  # from the whole data: the same in every process
        mine = data.part(group.index, group.size)
        # statistics are float32 quantities: no TF32 in cuDNN convolutions or matmuls (on by default for cuDNN)
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        label = f"{kind} statistics" + (f" ({len(groups)} passes)" if len(groups) > 1 else "")
        bar = (progress if group.main and progress else SILENT).bar(label, len(mine) * len(groups), unit="ex")

        def make() -> Any:
            return batches(mine, loaded.tokenizer, batch_size, max_length, device, loaded.image_shape)

        names = stored_names(loaded.model)
        info: dict[str, object] = {"path": str(out), "kind": kind, "examples": len(data)}
        try:
            if kind == "gram":
                n_tensors, written = gram_file(
                    loaded, groups, make, bar.update, group, names, out, data, model_dir
                )
            else:
                from mergeflow.stats.fisher import fisher

                torch.manual_seed(seed + group.index)
                sums, count = fisher(loaded, make(), bar.update, samples=samples, seed=seed + group.index)
                examples = group.total(float(count))
                fisher_sums = {name: t.div_(max(examples, 1.0)) for name, t in group.sum(sums).items()}
                check_finite(fisher_sums, kind, data.path)
                tensors = {names[n]: t for n, t in fisher_sums.items() if n in names}
                n_tensors, written = len(tensors), None
                if group.main:
                    extra = {"samples": "exact" if loaded.task == "classifier" else samples}
                    written = write_stats(
                        out, tensors, kind, len(data), str(Path(model_dir).resolve()), set(), extra
                    )
        finally:
            bar.close()
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        if written is None:  # the first process writes the file
            return {**info, "written": False}
        return {
            **info,
            "path": str(written),
            "tensors": n_tensors,
            "max_length": max_length,
            "task": loaded.task,
            "offloaded": loaded.offloaded,
            "processes": group.size,
            "passes": len(groups),
        }


def check_finite(tensors: dict[str, torch.Tensor], kind: str, data_path: object) -> None:
    for n, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise InputError(
                f"{kind} statistics of {n!r} came out NaN or Inf over {data_path}; check the data "
                "and the model's outputs for non-finite values"
            )


def gram_file(
    loaded: Loaded,
    groups: list[list[str]],
    make: Any,
    progress: Any,
    group: Any,
    names: dict[str, str],
    out: str | Path,
    data: Any,
    model_dir: str | Path,
) -> tuple[int, Path | None]:
    """Run the Gram passes and (first process) write them as they come; (tensors written, path or None)."""
    passes = averaged(loaded, groups, make, progress, group)
    first, rows = next(passes)  # every layer's row count: which layers the file holds, before writing
    layers = linear_layers(loaded.model)
    held = [n for n in layers if rows[n] > 0 and n in names]
    shapes = [(names[n], (in_width(layers[n]), in_width(layers[n]))) for n in held]
    transposed = sorted(names[n] for n in held if layers[n][1])
    tokens = max(rows.values(), default=0)

    head = [first]  # handed over below, so that nothing here keeps the first group alive afterwards
    del first

    def chunks() -> Iterator[dict[str, torch.Tensor]]:
        """One group's Grams at a time: no name here holds a group while the next pass runs."""
        chunk: dict[str, torch.Tensor] | None = head.pop()
        while chunk is not None:
            check_finite(chunk, "gram", data.path)
            renamed = {names[n]: t for n, t in chunk.items() if n in names}
            chunk = None
            yield renamed
            del renamed
            following = next(passes, None)
            chunk = following[0] if following is not None else None
            del following

    def meta(mean: float) -> dict[str, str]:
        return {
            "mergeflow_stats": "gram",
            "examples": str(len(data)),
            "model": str(Path(model_dir).resolve()),
            "mean": repr(mean),
            "transposed": json.dumps(transposed),
            "tokens": str(tokens),
        }

    if not group.main:
        for _chunk in chunks():  # the collectives of every pass, nothing written
            pass
        return len(shapes), None
    path = atomic_write(lexical(Path(out)), lambda tmp: write_groups(tmp, shapes, chunks(), meta))
    return len(shapes), path
