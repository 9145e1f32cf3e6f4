from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.targets import Target, sim_target, vllm_target


@pytest.fixture(
    scope="module",
    params=[pytest.param("sim"), pytest.param("vllm", marks=pytest.mark.vllm)],
)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    if request.param == "sim":
        with sim_target() as sim:
            yield sim
    else:
        workdir: Path = tmp_path_factory.mktemp("vllm")
        with vllm_target(workdir) as real:
            yield real
