"""The fuzz suites' gateway: ``sluice serve`` and ``sluice-sim`` as real processes, and the
hypothesis profiles (``make test`` runs a few thousand cases, ``make fuzz`` tens of thousands).

Every answer the suites get is tallied by status, and the tally is printed at the end of the
run, so that a long run's counts can be quoted.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, settings

from bench.procs import SIM_COMMAND, SLUICE_COMMAND, stop_process

FUZZ_MODEL = "fuzz-model"
TOKEN = "fuzz-admin-token"
TALLY: Counter[str] = Counter()

# Cases per property: make test's default, or SLUICE_FUZZ_CASES (make fuzz: 10,000).
settings.register_profile(
    "sluice-fuzz",
    max_examples=int(os.environ.get("SLUICE_FUZZ_CASES", "600")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("sluice-fuzz")


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    host: str
    port: int
    process: subprocess.Popen[bytes]


def _first_line(process: subprocess.Popen[bytes], what: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line:
        raise RuntimeError(f"{what} exited before it was ready (code {process.wait()})")
    return line


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    process = subprocess.Popen(
        [
            *SIM_COMMAND,
            "--servers",
            "1",
            "--model",
            FUZZ_MODEL,
            "--profile",
            "instant",
            "--max-model-len",
            "2048",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        yield str(json.loads(_first_line(process, "the simulator"))["servers"][0])
    finally:
        stop_process(process)


def start_gateway(sim_url: str, workdir: Path, **env: str) -> Target:
    config = {
        "slo_classes": {
            "interactive": {"ttft_ms": 500, "tpot_ms": 50},
            "batch": {"ttft_ms": 5000, "tpot_ms": 200},
        },
        "default_class": "batch",
        "backends": [{"name": "b0", "url": sim_url}],
    }
    path = workdir / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [
            *SLUICE_COMMAND,
            "serve",
            "--config",
            str(path),
            "--port",
            "0",
            "--log-level",
            "ERROR",
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, **env},
    )
    url = _first_line(process, "the gateway").rsplit(" ", 1)[1]
    host, port = url.removeprefix("http://").split(":")
    return Target(url, host, int(port), process)


@pytest.fixture(scope="module")
def gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    target = start_gateway(
        sim_url,
        tmp_path_factory.mktemp("gateway"),
        SLUICE_ADMIN_TOKEN=TOKEN,
        SLUICE_HEADER_TIMEOUT_S="5",
        SLUICE_BODY_TIMEOUT_S="5",
    )
    try:
        yield target
    finally:
        stop(target)


def stop(target: Target) -> None:
    stop_process(target.process, timeout_s=20)
    assert target.process.returncode == 0, "the gateway did not exit cleanly"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY:
        line = ", ".join(f"{key}: {count}" for key, count in sorted(TALLY.items()))
        terminalreporter.write_line(f"fuzz answers by status: {line}")
