#!/usr/bin/env bash
# Run HERE (where pip reaches the package registry), before a GPU check: the wheels of mergeflow's dependencies
# that the GPU machine's image lacks (pydantic and its parts, google-re2), for its Python 3.12, at the versions
# this checkout's venv uses, into .whl/ (git-ignored; the device call carries it). See
# docs/performance.md, "On a GPU".
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for name in pydantic pydantic_core annotated-types typing-inspection google-re2; do
    version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$name==$version"
done
ls -l .whl
