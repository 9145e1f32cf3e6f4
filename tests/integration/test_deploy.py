"""What deploy/ ships: the compose file, the Helm chart and the Dockerfile, checked as far as a
machine without a container runtime or a cluster can check them.

- compose.yaml validates against the Compose specification's schema, and each service's
  command line and environment is started as a real process outside a container;
- the chart renders (helm from the package index, tests/helm.py) with its default values and
  a production-like values file, and every manifest validates against the Kubernetes OpenAPI
  schemas offline (kubernetes-validate); values the schema forbids fail to render.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml

from gateway.config import GatewayConfig
from gateway.settings import Settings
from tests import helm

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "sluice"
PRODUCTION = DEPLOY / "helm" / "values-production.yaml"
KUBERNETES = "1.31"
# Custom resources: no schema ships for them; their few fields are checked by hand.
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _settings_env(names: Iterator[str]) -> None:
    known = {f"SLUICE_{field.upper()}" for field in Settings.model_fields}
    unknown = sorted(set(names) - known)
    assert not unknown, f"not Sluice settings (typos are silently ignored): {unknown}"


# --- compose -------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_specification() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_prometheus_scrapes_every_service_on_its_port() -> None:
    compose = _compose()
    sim_args = compose["services"]["sim"]["command"]
    base = int(sim_args[sim_args.index("--base-port") + 1])
    servers = int(sim_args[sim_args.index("--servers") + 1])
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in config["scrape_configs"]}
    port = compose["services"]["sluice-1"]["environment"]["SLUICE_PORT"]
    assert targets["sluice"] == [f"sluice-1:{port}", f"sluice-2:{port}"]
    assert targets["vllm"] == [f"sim:{base + i}" for i in range(servers)]
    assert "/etc/prometheus/alerts.yaml" in config["rule_files"]


async def _first_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode().strip()


async def _stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.terminate()
    return await asyncio.wait_for(process.wait(), timeout=60)


async def test_compose_services_run_as_their_command_lines(tmp_path: Path, redis_url: str) -> None:
    """The sim and gateway services' commands and environment, as real processes: only what
    names the container network (host names, ports) is swapped for loopback."""
    services = _compose()["services"]
    sim_args = list(services["sim"]["command"])
    assert services["sim"]["entrypoint"] == ["sluice-sim"]
    sim_args[sim_args.index("--host") + 1] = "127.0.0.1"
    base_port = int(sim_args[sim_args.index("--base-port") + 1])
    sim_args[sim_args.index("--base-port") + 1] = "0"
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.sim.cli", *sim_args, stdout=asyncio.subprocess.PIPE
    )
    try:
        urls = json.loads(await _first_line(sim))["servers"]
        gateway_service = services["sluice-1"]
        env = {str(k): str(v) for k, v in gateway_service["environment"].items()}
        _settings_env(iter(env))
        env.update(SLUICE_HOST="127.0.0.1", SLUICE_PORT="0", SLUICE_REDIS_URL=redis_url)
        mounted = gateway_service["volumes"][0].split(":")
        config_text = (DEPLOY / mounted[0]).read_text()
        for i, url in enumerate(urls):
            config_text = config_text.replace(f"http://sim:{base_port + i}", url)
        config = tmp_path / "sluice.yaml"
        config.write_text(config_text)
        command = gateway_service["command"]
        assert command[command.index("--config") + 1] == mounted[1]
        command = [*command]
        command[command.index("--config") + 1] = str(config)
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *command, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **env},
        )  # fmt: skip
        try:
            url = (await _first_line(gateway)).rsplit(" ", 1)[1]
            model = sim_args[sim_args.index("--model") + 1]
            body = {"model": model, "prompt": "compose", "max_tokens": 3}
            async with aiohttp.ClientSession() as http:
                async with http.post(url + "/v1/completions", json=body) as response:
                    assert response.status == 200, await response.text()
                async with http.get(url + "/ready") as response:
                    assert (await response.json())["healthy_backends"] == [
                        f"sim-{i}" for i in range(len(urls))
                    ]
                async with http.get(url + "/metrics") as response:
                    assert "sluice_shared_state_up 1.0" in await response.text()
        finally:
            assert await _stop(gateway) == 0
    finally:
        assert await _stop(sim) == 0


def test_dockerfile_runs_the_gateway_as_a_non_root_user_with_a_health_check() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2  # multi-stage: nothing of the build stage but the venv is kept
    final = lines[lines.index(stages[1]) :]
    assert any(line.startswith("USER 10001") for line in final)
    assert any(line.startswith("HEALTHCHECK") for line in final)
    assert any("/health" in line for line in final)
    assert 'ENTRYPOINT ["sluice"]' in final
    assert 'CMD ["serve"]' in final
    _settings_env(
        word.split("=")[0].strip()
        for line in final
        for word in line.replace("ENV ", "").replace("\\", "").split()
        if word.startswith("SLUICE_")
    )


# --- Helm ----------------------------------------------------------------------------------

needs_helm = pytest.mark.skipif(
    not helm.supported(), reason="the packaged helm binary is built for Linux x86-64 only"
)


def _render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm.helm_binary()), "template", "sluice", str(CHART), *args],
        capture_output=True,
        text=True,
    )


def _manifests(*args: str) -> list[dict[str, Any]]:
    done = _render(*args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _validate(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM:
        assert doc["metadata"]["name"]
        assert doc["spec"]
        return
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@needs_helm
@pytest.mark.parametrize("values", [[], ["-f", str(PRODUCTION)]], ids=["default", "production"])
def test_chart_renders_and_validates(values: list[str]) -> None:
    lint = subprocess.run(
        [str(helm.helm_binary()), "lint", str(CHART), *values], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = _manifests(*values)
    for doc in docs:
        _validate(doc)
    kinds = {doc["kind"]: doc for doc in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds.keys()
    GatewayConfig.model_validate(yaml.safe_load(kinds["ConfigMap"]["data"]["sluice.yaml"]))
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    _settings_env(e["name"] for e in container["env"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    grace = float(env["SLUICE_SHUTDOWN_DELAY_S"]) + float(env["SLUICE_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > grace  # the kubelet waits out the drain


@needs_helm
def test_production_values_scale_the_gateway_and_the_vllm_pool() -> None:
    kinds = {doc["kind"]: doc for doc in _manifests("-f", str(PRODUCTION))}
    assert {"HorizontalPodAutoscaler", "ServiceMonitor", "ScaledObject"} <= kinds.keys()
    assert "Secret" not in kinds  # the production install brings its own
    assert "replicas" not in kinds["Deployment"]["spec"]  # the HPA owns the count
    trigger = kinds["ScaledObject"]["spec"]["triggers"][0]["metadata"]
    assert 'sluice_pool_scale_recommendation{pool="llama-8b"}' in trigger["query"]


@needs_helm
@pytest.mark.parametrize(
    "bad",
    [
        ["--set", "replicaCount=0"],
        ["--set", "service.port=70000"],
        ["--set", "redis.url=http://nope"],
        ["--set", "settings.NOT_SLUICE=1"],
        ["--set", "unknownKey=1"],
        ["--set", "shutdown.graceSeconds=-1"],
        ["--set", "vllmAutoscaling.enabled=true"],  # without the vLLM Deployment's name
    ],
)
def test_values_the_schema_forbids_do_not_render(bad: list[str]) -> None:
    assert _render(*bad).returncode != 0
