"""The search loop: an Optuna study (its storage makes it resumable) asked for points, each merged and scored
by a worker: the search process itself, or Ray actors that declare the CPUs, GPU and memory a trial needs,
so Ray places them and never oversubscribes a node. Optuna's ask-and-tell interface keeps as many trials
in flight as there are workers; Ray runs them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mergeflow.search.space import materialize
from mergeflow.search.trial import Evaluator

STUDY = "mergeflow-search"
SAMPLERS = ("cmaes", "tpe", "random")


class OptunaPick:
    """Values drawn from an Optuna trial (define-by-run: a choice's branch asks only its own values)."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def float(self, name: str, low: float, high: float, log: bool) -> float:
        return float(self.trial.suggest_float(name, low, high, log=log))

    def choice(self, name: str, choices: list[Any]) -> Any:
        return self.trial.suggest_categorical(name, choices)


def sampler(kind: str, seed: int) -> Any:
    import optuna

    if kind == "cmaes":  # choices and branches CMA-ES cannot model are sampled independently, quietly
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(storage: str, kind: str, seed: int) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{storage}",
        load_if_exists=True,
        sampler=sampler(kind, seed),
        direction="minimize",
    )


def requeue_interrupted(study: Any) -> int:
    """Trials a killed search left running: their parameters queued again (``requeued_from``), then the
    trial marked failed and left out of every count (see ``finished``), so none is lost and none counts
    twice. Only one search process uses a study at a time (a file lock)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs.get("requeued_from") for t in trials if t.state == TrialState.WAITING}
    stale = [t for t in trials if t.state == TrialState.RUNNING]
    for t in stale:
        if t.number not in queued:  # queued before the fail, so a kill in between loses nothing
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number}, skip_if_exists=False)
        study.tell(t.number, state=TrialState.FAIL)
    return len(stale)


def interrupted(study: Any) -> set[int]:
    """Numbers of the trials a killed search left running (their parameters ran again)."""
    return {
        t.user_attrs["requeued_from"]
        for t in study.get_trials(deepcopy=False)
        if "requeued_from" in t.user_attrs
    }


def finished(study: Any) -> list[Any]:
    """The trials that count: complete or failed, not the interrupted ones."""
    from optuna.trial import TrialState

    gone = interrupted(study)
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        if t.number not in gone
    ]


@dataclass
class Workers:
    """Where trials run: ``submit`` starts one, ``wait`` returns a finished (handle, result)."""

    submit: Callable[[dict[str, Any]], Any]
    wait: Callable[[], tuple[Any, dict[str, Any]]]
    size: int
    close: Callable[[], None]


def local_workers(evaluator: Evaluator) -> Workers:
    done: list[tuple[Any, dict[str, Any]]] = []
    counter = [0]

    def submit(recipe: dict[str, Any]) -> Any:
        counter[0] += 1
        done.append((counter[0], evaluator(recipe)))
        return counter[0]

    return Workers(submit, lambda: done.pop(0), 1, lambda: None)


def ray_workers(
    evaluator_args: tuple[Any, ...], n: int, address: str | None, cpus: float, gpus: float, memory: int
) -> Workers:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    actor_cls: Any = ray.remote(num_cpus=cpus, num_gpus=gpus, memory=memory or None)(_Actor)  # type: ignore[arg-type]
    actors = [actor_cls.remote(*evaluator_args) for _ in range(n)]
    idle = list(actors)
    running: dict[Any, Any] = {}

    def submit(recipe: dict[str, Any]) -> Any:
        actor = idle.pop()
        ref = actor.run.remote(recipe)
        running[ref] = actor
        return ref

    def wait() -> tuple[Any, dict[str, Any]]:
        ready, _ = ray.wait(list(running), num_returns=1)
        ref = ready[0]
        idle.append(running.pop(ref))
        try:
            return ref, ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker died (out of memory, killed): the trial failed
            return ref, {"error": f"worker lost: {type(exc).__name__}", "seconds": 0.0, "worker": "?"}

    def close() -> None:
        for a in actors:
            ray.kill(a)

    return Workers(submit, wait, n, close)


class _Actor:
    def __init__(self, *args: Any) -> None:
        import torch

        cpus = int(os.environ.get("OMP_NUM_THREADS") or 0)  # Ray sets it to the actor's CPUs
        if cpus > 0:
            torch.set_num_threads(cpus)
        self.evaluator = Evaluator(*args)

    def run(self, recipe: dict[str, Any]) -> dict[str, Any]:
        return self.evaluator(recipe)


def search_loop(
    study: Any,
    tree: Any,
    accepts: Callable[[str, str], bool],
    workers: Workers,
    trials: int,
    time_budget: float | None,
    on_result: Callable[[Any, dict[str, Any]], None],
) -> None:
    """Ask, run, tell until ``trials`` have finished (counting the study's earlier ones) or time is up."""
    from optuna.trial import TrialState

    start = time.monotonic()
    in_flight: dict[Any, Any] = {}
    left = trials - len(finished(study))
    while left > 0 or in_flight:
        while (
            left > 0
            and len(in_flight) < workers.size
            and (time_budget is None or time.monotonic() - start < time_budget)
        ):
            trial = study.ask()
            recipe = materialize(tree, OptunaPick(trial), accepts)
            in_flight[workers.submit(recipe)] = trial
            left -= 1
        if not in_flight:
            break
        handle, result = workers.wait()
        trial = in_flight.pop(handle)
        for key in ("worker", "seconds", "metrics", "error", "merged_in"):
            if key in result:
                trial.set_user_attr(key, result[key])
        if "value" in result:
            study.tell(trial, result["value"])
        else:
            study.tell(trial, state=TrialState.FAIL)
        on_result(trial, result)
