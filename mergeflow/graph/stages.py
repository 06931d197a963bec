"""Running a multi-stage file: every stage planned before the first runs, then each stage that is not
up to date run in dependency order, named stages into the intermediate folder, the final one into OUT.

A stage whose input is an earlier stage's output not yet written is planned against that output as
its plan describes it (tensor names, dtypes, shapes; config and tokenizer files written to a scratch
folder by the code that will write them), so shapes and vocabularies are checked across the whole
graph up front. A named stage's output is reused when its fingerprint (mergeflow's version, the
stage's recipe, every input file's identity, the output layout: what ``--resume`` trusts) matches the
stamp its last complete run left beside it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mergeflow.graph.fingerprint import run_fingerprint
from mergeflow.graph.support import write_support
from mergeflow.io.header import TensorInfo
from mergeflow.io.output_dir import check_output_path
from mergeflow.io.ownership import atomic_write, check_file_target
from mergeflow.io.reader import ModelReader
from mergeflow.progress import Progress
from mergeflow.recipe.stages import Stage, StageFile

STAMP = ".{name}.mergeflow-stage.json"


class PlannedReader(ModelReader):
    """A stage output that does not exist yet, as its plan describes it: headers, no data."""

    def __init__(self, name: str, prep: Any, out: Path, scratch: Path) -> None:
        self._prep, self._out = prep, out
        super().__init__(name, scratch)

    def _discover(self, allow_pickle: bool) -> None:
        write_support(self._prep, self.path)
        cfg = self.path / "config.json"
        self.config = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else None
        for lay in self._prep.plan.layouts:
            for t in lay.tensors:
                begin, end = lay.offsets[t.name]
                self.tensors[t.name] = TensorInfo(
                    t.name, t.dtype, t.shape, str(self._out / lay.filename), begin, end
                )

    def read(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"model '{self.name}' is planned, not yet written")

    def file_identity(self, file: str) -> str:
        return f"{file}:planned"


@dataclass
class StagePlan:
    stage: Stage
    out: Path
    prep: Any  # Prepared
    fresh: bool  # a named stage whose output is up to date: not run again
    planned_inputs: tuple[str, ...]  # inputs planned, not yet written


def stamp_path(sf: StageFile, name: str) -> Path:
    return sf.intermediate / STAMP.format(name=name)


def _stamped(sf: StageFile, stage: Stage, prep: Any) -> bool:
    path, out = stamp_path(sf, stage.name or ""), sf.intermediate / (stage.name or "")
    try:
        data = (
            json.loads(path.read_text(encoding="utf-8")) if path.is_file() and not path.is_symlink() else {}
        )
    except (OSError, ValueError):
        return False
    return out.is_dir() and isinstance(data, dict) and data.get("fingerprint") == run_fingerprint(prep)


def plan_stages(
    sf: StageFile, recipe_path: str, out: Path, opts: Any, scratch: Path, only: list[Stage] | None = None
) -> list[StagePlan]:
    """Prepare every stage (``only``: these) in run order; see the module's docstring."""
    from mergeflow.graph.run import prepare

    plans: dict[str | None, StagePlan] = {}
    for st in only or sf.stages:
        given: dict[str, ModelReader] = {}
        for model, entry in st.recipe.models.items():
            up = plans[entry.stage] if entry.stage is not None else None
            if up is not None and not up.fresh:
                given[model] = PlannedReader(model, up.prep, up.out, Path(tempfile.mkdtemp(dir=scratch)))
        prep = prepare(recipe_path, opts, recipe=st.recipe, recipe_text=st.text, given=given)
        target = out if st is sf.final else sf.intermediate / (st.name or "")
        fresh = st is not sf.final and not given and _stamped(sf, st, prep)
        plans[st.name] = StagePlan(st, target, prep, fresh, tuple(given))
    return list(plans.values())


def run_stages(
    sf: StageFile,
    recipe_path: str,
    out: Path,
    opts: Any,
    progress: Progress | None = None,
    upto: str | None = None,
    echo: Any = None,
) -> list[tuple[StagePlan, Any]]:
    """Plan every stage, then run those not up to date. Returns (stage plan, run result or None) per stage."""
    from mergeflow.graph.run import prepare, run

    only = sf.needed_for(upto) if upto is not None else None
    with tempfile.TemporaryDirectory(prefix="mergeflow-stages-") as scratch:
        plans = plan_stages(sf, recipe_path, out, opts, Path(scratch), only)
    for sp in plans:  # OUT unusable: say so before the first stage runs, not after the last
        if sp.stage is sf.final:
            check_output_path(out, opts.force, sp.prep.inputs, opts.parents)
    done: list[tuple[StagePlan, Any]] = []
    for sp in plans:
        st = sp.stage
        if sp.fresh:
            done.append((sp, None))
            if echo:
                echo(f"stage {st.label}: up to date ({sp.out})")
            continue
        prep = (
            sp.prep
            if not sp.planned_inputs
            else prepare(recipe_path, opts, recipe=st.recipe, recipe_text=st.text)
        )
        named = st is not sf.final
        stamp = None
        if named:  # the stamp replaces only one mergeflow wrote: never a user's file or a link of that name
            os.makedirs(sf.intermediate, exist_ok=True)
            stamp = check_file_target(stamp_path(sf, st.name or ""), prep.inputs, "stage stamp")
        sopts = (
            replace(opts, force=True, label=f"stage {st.label}")
            if named
            else replace(opts, label=f"stage {st.label}")
        )
        result = run(prep, sp.out, sopts, progress)
        if stamp is not None:
            fp = run_fingerprint(prep)
            text = json.dumps({"written_by": "mergeflow", "fingerprint": fp})

            def put(p: Path, text: str = text) -> None:
                p.write_text(text, encoding="utf-8")

            atomic_write(stamp, put)
        done.append((replace(sp, prep=prep), result))
        if echo:
            echo(
                f"stage {st.label}: wrote {result.out} ({result.plan.n_tensors} tensors) in {result.seconds:.2f} s"
            )
    return done
