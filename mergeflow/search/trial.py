"""One trial: a plain recipe (a point of the space) merged in memory and scored on the objectives' data.

An ``Evaluator`` lives as long as its worker (a Ray actor, or the search process itself): it loads each
data file and the model class once and reuses them for every trial; the models' files stay in the page
cache between trials. Nothing is written: the merge's tensors are kept in memory and run through the
model class with ``torch.func.functional_call``.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml

from mergeflow.search.section import Objective


def score(metrics: dict[str, float], objectives: list[Objective]) -> float:
    """The number the search minimises: accuracies count negatively, losses and perplexities as they are."""
    total = 0.0
    for i, o in enumerate(objectives):
        m = metrics[f"{i}:{o.metric}"]
        total += o.weight * (-m if o.metric == "accuracy" else m)
    return total


class Evaluator:
    def __init__(
        self,
        source_name: str,
        root: str,
        objectives: list[Objective],
        device: str,
        max_memory: int | None = None,
        scratch: str | None = None,
    ) -> None:
        self.source_name, self.root, self.objectives, self.device = (
            source_name,
            Path(root),
            objectives,
            device,
        )
        self.max_memory, self.scratch = (
            max_memory,
            scratch,
        )  # a merge too large for memory is written under scratch
        self.merged_in = ""
        self._data: dict[str, Any] = {}
        self._models: dict[str, Any] = {}

    def data(self, o: Objective) -> Any:
        from mergeflow.stats.data import load_data

        path = str(Path(o.data) if Path(o.data).is_absolute() else self.root / o.data)
        key = f"{path}:{o.max_examples}"
        if key not in self._data:
            self._data[key] = load_data(path).subset(o.max_examples)
        return self._data[key]

    def model(self, folder: str) -> Any:
        from mergeflow.stats.model import load_model

        if folder not in self._models:
            self._models[folder] = load_model(folder, torch.device(self.device))
        return self._models[folder]

    def __call__(self, recipe_data: dict[str, Any]) -> dict[str, Any]:
        """{"value", "metrics", "seconds", "worker"} or, when the trial fails, {"error", ...}."""
        start = time.perf_counter()
        worker = f"{os.uname().nodename}:{os.getpid()}"
        try:
            metrics = self.metrics(recipe_data)
            value = score(metrics, self.objectives)
            if not math.isfinite(value):
                return {
                    "error": "the score is NaN or infinite",
                    "metrics": metrics,
                    "worker": worker,
                    "seconds": time.perf_counter() - start,
                }
            return {
                "value": value,
                "metrics": metrics,
                "worker": worker,
                "seconds": time.perf_counter() - start,
                "merged_in": self.merged_in,
            }
        except Exception as exc:  # noqa: BLE001  (a failed trial is recorded; the search goes on)
            first = str(exc).splitlines()[0] if str(exc) else ""
            return {
                "error": f"{type(exc).__name__}: {first}",
                "worker": worker,
                "seconds": time.perf_counter() - start,
                "traceback": traceback.format_exc(limit=6),
            }

    def metrics(self, recipe_data: dict[str, Any]) -> dict[str, float]:
        from mergeflow.align.catalog import STEPS
        from mergeflow.graph import run as runner
        from mergeflow.graph.in_memory import merge_in_memory
        from mergeflow.graph.memory import tensor_budget
        from mergeflow.graph.plan import model_dir
        from mergeflow.merge.catalog import OPERATORS
        from mergeflow.recipe.validate import validate
        from mergeflow.recipe.yaml_source import YamlSource
        from mergeflow.stats.model import load_model

        recipe = validate(YamlSource(recipe_data, self.source_name), OPERATORS, STEPS, root=self.root)
        opts = runner.Options(device=self.device, max_memory=self.max_memory)
        prep = runner.prepare(
            self.source_name, opts, recipe=recipe, recipe_text=yaml.safe_dump(recipe_data, sort_keys=False)
        )
        folder = model_dir(str(prep.readers[recipe.config_source].path))
        if folder is None:
            raise ValueError(
                f"model '{recipe.config_source}' has no folder with a config to evaluate the merge with"
            )
        self.merged_in = (
            "memory" if 2 * prep.plan.bytes_written <= tensor_budget(prep.max_memory) else "folder"
        )
        if self.merged_in == "memory":  # the merge (and a float32 copy) fit
            return self.score_in_memory(merge_in_memory(prep), str(folder))
        with tempfile.TemporaryDirectory(
            prefix=".mergeflow-trial-", dir=self.scratch
        ) as scratch:  # too large: a folder, deleted after
            out = runner.run(prep, Path(scratch) / "merged", opts).out
            return self.score(load_model(out, torch.device(self.device)))

    def score_in_memory(self, merged: dict[str, torch.Tensor], folder: str) -> dict[str, float]:
        from mergeflow.learn.fused import params_from
        from mergeflow.learn.refine import module_names
        from mergeflow.stats.model import on_weights

        loaded = self.model(folder)
        dev = torch.device(self.device)
        params = params_from(
            module_names(loaded, merged), lambda st: merged[st].to(device=dev, dtype=torch.float32)
        )
        return self.score(on_weights(loaded, params))

    def score(self, loaded: Any) -> dict[str, float]:
        from mergeflow.eval.loss import evaluate

        out: dict[str, float] = {}
        scored: dict[
            tuple[str, int | None, int], dict[str, float]
        ] = {}  # one pass per data file, every metric
        for i, o in enumerate(self.objectives):
            key = (o.data, o.max_examples, o.batch_size)
            if key not in scored:
                scored[key] = evaluate(loaded, self.data(o), batch_size=o.batch_size)
            res = scored[key]
            value = math.exp(res["loss"]) if o.metric == "perplexity" else res.get(o.metric)
            if value is None:
                raise ValueError(
                    f"search.objective[{i}]: the model gives no {o.metric} (a {loaded.task} model)"
                )
            out[f"{i}:{o.metric}"] = float(value)
        return out
