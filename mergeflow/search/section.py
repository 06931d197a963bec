"""The ``search:`` section of a search file: what a trial is scored by and how the study runs."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: Literal["loss", "accuracy", "perplexity"] = Field(
        "loss",
        description="What is measured on the data (through the code behind `mergeflow eval`): loss and "
        "perplexity are minimised, accuracy maximised.",
    )
    data: str = Field(
        description="Held-out examples (.npz with x, y; JSONL; or text), relative to the search file."
    )
    weight: float = Field(
        1.0,
        gt=0.0,
        description="Its weight in the score the search minimises (the weighted "
        "sum of the objectives, accuracies counted negatively).",
    )
    max_examples: int | None = Field(None, ge=1, description="Only the first N examples.")
    batch_size: int = Field(64, ge=1, description="Examples per forward pass.")


class SearchSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    objective: list[Objective] = Field(min_length=1, description="One objective, or several (weighted).")
    sampler: Literal["cmaes", "tpe", "random"] = Field(
        "cmaes", description="Optuna's sampler: CMA-ES (choices are sampled independently), TPE, or random."
    )
    trials: int = Field(50, ge=1, le=100_000, description="Trials to finish (failed ones count).")
    time_budget: float | None = Field(
        None,
        gt=0,
        description="Stop starting trials after this long: seconds, or a number with s, m or h ('30m').",
    )
    seed: int = Field(0, description="Seed of the sampler.")
    storage: str | None = Field(
        None,
        description="Optuna storage (a SQLite file) that makes the search resumable; "
        "default OUT.search.db beside the output folder.",
    )
    write_best: bool = Field(True, description="Also write the best trial's merged model to OUT/best.")
    plots: bool = Field(
        True,
        description="Draw history.png and importance.png (matplotlib; the importance's fANOVA takes seconds, "
        "more on studies with many parameters). The trials' table is written either way.",
    )

    @field_validator("objective", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, dict) else v

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        if isinstance(v, str):
            m = re.fullmatch(r"\s*([0-9.]+)\s*([smh]?)\s*", v)
            if m is None:
                raise ValueError("a duration is seconds, or a number with s, m or h ('30m')")
            return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
        return v
