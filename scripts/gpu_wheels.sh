#!/usr/bin/env bash
# Wheels for the GPU acceptance run (scripts/gpu_acceptance.py): the packages the GPU image lacks —
# deepspeed, datasets, wandb, submitit and the dependencies of theirs it also lacks — for CPython 3.12 on
# x86-64 Linux, downloaded HERE (the GPU machine has no network) into wheels/ (git-ignored, never committed).
#
#   bash scripts/gpu_wheels.sh          # ~30 MB; then the device `run` tool must carry them:
#   run(command="python3 scripts/gpu_acceptance.py --out $OUT", carry=["wheels"], timeout_s=600)
#
# The acceptance script's env step installs each wheel whose distribution is missing there with
# `pip install --no-index --no-deps --target`, so nothing already in the image is shadowed.
# Versions: the ones the test environment resolved (docs/benchmarks.md, "GPU acceptance run").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${WHEELS_DIR:-wheels}
mkdir -p "$DEST"

BINARY=(
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  wandb==0.31.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  platformdirs==4.14.9 sniffio==1.3.1 distro==1.9.0 googleapis-common-protos==1.76.0
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-proto==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2
  opentelemetry-exporter-otlp-proto-common==1.45.2
  submitit==1.5.4 hjson==3.1.0
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}"
# DeepSpeed is published as a source archive only: build its (pure-Python) wheel here.
"$PY" -m pip wheel -q --no-deps -w "$DEST" deepspeed==0.19.8
ls -1 "$DEST"
du -sh "$DEST"
