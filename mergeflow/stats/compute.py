"""``mergeflow stats``: run a model over a dataset and write its statistics file."""

from __future__ import annotations

from pathlib import Path

import torch

from mergeflow.errors import InputError
from mergeflow.io.stats_file import write_stats
from mergeflow.progress import SILENT, Progress
from mergeflow.stats.data import batches, load_data
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
    device = group.device
    data = load_data(data_path).subset(max_examples)
    # Grams do not depend on a head
    loaded = load_model(model_dir, device, headless=kind == "gram", max_memory=max_memory)
    check_fits(loaded, data, model_dir)
    if kind == "gram":
        check_gram_memory(loaded, model_dir)
    max_length = max_length_for(loaded, data, max_length)  # from the whole data: the same in every process
    mine = data.part(group.index, group.size)
    # statistics are float32 quantities: no TF32 in cuDNN convolutions or matmuls (on by default for cuDNN)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    bar = (progress if group.main and progress else SILENT).bar(f"{kind} statistics", len(mine), unit="ex")
    it = batches(mine, loaded.tokenizer, batch_size, max_length, device, loaded.image_shape)
    try:
        if kind == "gram":
            from mergeflow.stats.gram import gram

            sums, counts, transposed = gram(loaded, it, bar.update)
            rows = group.sum(
                {n: torch.tensor([c], dtype=torch.float64, device=device) for n, c in counts.items()}
            )
            sums = group.sum(sums)
            tensors = {
                n: t.div_(float(rows[n][0])) for n, t in sums.items() if float(rows[n][0]) > 0
            }  # in place
            transposed &= set(tensors)
            extra: dict[str, int | str] = {
                "tokens": int(max((float(r[0]) for r in rows.values()), default=0))
            }
        else:
            from mergeflow.stats.fisher import fisher

            torch.manual_seed(seed + group.index)
            sums, count = fisher(loaded, it, bar.update, samples=samples, seed=seed + group.index)
            examples = group.total(float(count))
            tensors = {name: t.div_(max(examples, 1.0)) for name, t in group.sum(sums).items()}
            transposed, extra = set(), {"samples": "exact" if loaded.task == "classifier" else samples}
    finally:
        bar.close()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for n, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise InputError(
                f"{kind} statistics of {n!r} came out NaN or Inf over {data.path}; check the data "
                "and the model's outputs for non-finite values"
            )
    names = stored_names(loaded.model)
    tensors = {names[n]: t for n, t in tensors.items() if n in names}
    transposed = {names[n] for n in transposed if n in names}
    if not group.main:  # the first process writes the file
        return {"path": str(out), "kind": kind, "examples": len(data), "written": False}
    path = write_stats(out, tensors, kind, len(data), str(Path(model_dir).resolve()), transposed, extra)
    return {
        "path": str(path),
        "kind": kind,
        "examples": len(data),
        "tensors": len(tensors),
        "max_length": max_length,
        "task": loaded.task,
        "offloaded": loaded.offloaded,
        "processes": group.size,
    }


def check_gram_memory(loaded: Loaded, model_dir: str | Path) -> None:
    """Refuse, before any forward pass, Grams that cannot be held where they are summed (a float32
    in x in matrix per linear layer, held whole until the file is written)."""
    from mergeflow.stats import gram

    need, largest, largest_bytes = gram.gram_bytes(loaded.model)
    free, where = gram.available_bytes(loaded.input_device)
    if need > free:
        raise InputError(
            f"{model_dir}: gram statistics hold a float32 Gram per linear layer, {need / 2**30:.2f} GiB for this "
            f"model (largest {largest!r}, {largest_bytes / 2**20:.0f} MiB), more than {where} "
            f"({free / 2**30:.2f} GiB); take fisher statistics (the weights' size), or run on a machine with more "
            "memory"
        )
