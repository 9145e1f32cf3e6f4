"""The Grafana dashboard and the Prometheus rules read only what a live gateway exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL, GatewayFactory, SimFactory

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_METRIC = re.compile(r"\bsluice_[a-z0-9_]+")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_MATCHER = re.compile(r"\{([^}]*)\}")
_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def _dashboard_queries() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "sluice.json").read_text())
    return [t["expr"] for panel in board["panels"] for t in panel.get("targets") or []]


def _rule_queries() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _exported(text: str) -> dict[str, set[str]]:
    """Sample name -> its label names, as scraped."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def _uses(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) a PromQL expression reads."""
    labels = {name.strip() for group in _BY.findall(expr) for name in group.split(",")}
    for matchers in _MATCHER.findall(expr):
        labels.update(_LABEL.findall(matchers))
    return set(_METRIC.findall(expr)), labels - {""}


def test_the_dashboard_file_is_what_its_builder_writes() -> None:
    script = DEPLOY / "grafana" / "build_dashboard.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


async def test_every_metric_and_label_queried_is_exported(
    make_sim: SimFactory, make_gateway: GatewayFactory, http: aiohttp.ClientSession, redis_url: str
) -> None:
    sim = await make_sim(prompt_tokens_details=True)  # cached tokens reported: their series
    # A tenant with limits, so that its series exist too.
    tenants = {"acme": {"weight": 2, "limits": {"requests_per_second": 100, "max_concurrent": 9}}}
    gateway = await make_gateway(
        [sim], settings={"redis_url": redis_url, "redis_prefix": "observability"}, tenants=tenants
    )
    async with http.post(gateway.url + "/admin/keys", json={"tenant": "acme"}) as response:
        key = (await response.json())["key"]
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "prompt": "p", "max_tokens": 3, "ignore_eos": True}
    async with http.post(
        gateway.url + "/v1/completions", json={**body, "stream": True}, headers=auth
    ) as response:
        assert response.status == 200
        await response.read()
    refused = {"x-slo-ttft-ms": "0.01", **auth}
    async with http.post(gateway.url + "/v1/completions", json=body, headers=refused) as response:
        assert response.status == 429
    async with http.get(gateway.url + "/metrics") as response:
        exported = _exported(await response.text())
    queries = _dashboard_queries() + _rule_queries()
    assert len(queries) > 20
    for expr in queries:
        metrics, labels = _uses(expr)
        assert metrics, expr
        for metric in metrics:
            assert metric in exported, f"{metric} (in {expr!r}) is not exported"
        available = set().union(*(exported[m] for m in metrics))
        assert labels <= available, f"{labels - available} not labels of {metrics}: {expr!r}"
