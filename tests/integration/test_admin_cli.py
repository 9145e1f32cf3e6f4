"""``sluice admin`` as a user runs it: a child process talking to a running gateway."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.procs import free_port
from gateway.app import RunningServer
from tests.conftest import GatewayFactory, SimFactory

TOKEN = "s3cret-token"


async def _admin(gw: RunningServer | str, *args: str, token: str = TOKEN) -> tuple[int, Any, str]:
    url = gw if isinstance(gw, str) else gw.url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "admin",
        "--url",
        url,
        "--token",
        token,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    code = await process.wait()
    return code, json.loads(out) if code == 0 else None, err.decode()


async def test_admin_cli_drives_the_api(
    make_sim: SimFactory, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    first, second = await make_sim(), await make_sim()
    gw = await make_gateway([first], settings={"admin_token": TOKEN})

    code, classes, _ = await _admin(
        gw,
        "classes",
        "set",
        "gold",
        "--ttft-ms",
        "800",
        "--tpot-ms",
        "40",
        "--degrade",
        "prefer_fast",
    )
    assert code == 0
    assert classes["slo_class"] == {
        "ttft_ms": 800,
        "tpot_ms": 40,
        "on_unattainable": "reject",
        "protected": True,
        "degrade": "prefer_fast",
    }
    code, listed, _ = await _admin(gw, "classes", "list")
    assert "gold" in listed["slo_classes"]
    code, _, err = await _admin(gw, "classes", "delete", "batch")
    assert code == 1
    assert "409 slo_class_in_use" in err

    code, added, err = await _admin(
        gw, "backends", "add", "b1", second.url, "--max-in-flight", "9", "--pool", "p"
    )
    assert code == 0, err
    assert added["version"] == 3
    code, drained, _ = await _admin(gw, "backends", "drain", "b1")
    assert drained["backend"]["state"] == "draining"
    code, moved, _ = await _admin(gw, "backends", "retarget", "b1", "--model", "m2")
    assert code == 0
    assert moved["backend"]["models"] == []  # until b1 lists m2 itself
    code, rows, _ = await _admin(gw, "backends", "list")
    row = next(r for r in rows["backends"] if r["name"] == "b1")
    assert (row["state"], row["pool"]) == ("draining", "p")
    code, _, err = await _admin(gw, "backends", "set", "nope", "--weight", "2")
    assert code == 1
    assert "404 backend_not_found" in err

    # Edit the config file-wise, with the ETag it was read at; a stale ETag is refused.
    code, current, _ = await _admin(gw, "config", "get")
    etag = current.pop("etag")
    current["slo_classes"]["silver"] = {"ttft_ms": 2000, "tpot_ms": 60}
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(current))
    code, written, _ = await _admin(gw, "config", "put", str(path), "--if-match", etag)
    assert code == 0
    assert written["etag"] == f'"{int(etag.strip(chr(34))) + 1}"'
    code, _, err = await _admin(gw, "config", "put", str(path), "--if-match", etag)
    assert code == 1
    assert "409 stale_version" in err

    code, pool, err = await _admin(gw, "pools", "set", "p", "--min-size", "1", "--max-size", "1")
    assert code == 0, err
    assert pool["pool"]["max_size"] == 1
    code, pools, _ = await _admin(gw, "pools", "list")
    assert [i["backends"][0]["name"] for i in pools["pools"]["p"]["macro_instances"]] == ["b1"]
    code, _, err = await _admin(gw, "pools", "set", "p", "--min-size", "3", "--max-size", "4")
    assert code == 1
    assert "400" in err
    code, _, _ = await _admin(gw, "pools", "delete", "p")
    assert code == 0

    code, _, err = await _admin(gw, "stats", token="wrong")
    assert code == 1
    assert "401" in err
    code, document, _ = await _admin(gw, "openapi")
    assert document["openapi"] == "3.1.0"
    code, _, err = await _admin(f"http://127.0.0.1:{free_port()}", "stats")
    assert code == 2
    assert "cannot reach" in err


async def test_admin_cli_manages_adapters(
    make_sim: SimFactory, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway([await make_sim()], settings={"admin_token": TOKEN})
    code, created, _ = await _admin(
        gw, "adapters", "set", "sql", "--base", "sim-model", "--path", "/l/sql", "--load-ms", "80"
    )
    assert code == 0
    assert created["adapter"]["load_ms"] == 80
    assert created["adapter"]["resident_on"] == []
    code, pinned, _ = await _admin(gw, "adapters", "pin", "sql", "--pool", "tuned")
    assert code == 0
    assert pinned["adapter"]["pool"] == "tuned"
    code, listing, _ = await _admin(gw, "adapters", "list")
    assert code == 0
    assert listing["adapters"]["sql"]["pool"] == "tuned"
    code, unpinned, _ = await _admin(gw, "adapters", "unpin", "sql")
    assert code == 0
    assert unpinned["adapter"]["pool"] is None
    code, _, _ = await _admin(gw, "adapters", "delete", "sql")
    assert code == 0
    code, _, err = await _admin(gw, "adapters", "pin", "sql", "--pool", "tuned")
    assert code == 1
    assert "adapter_not_found" in err
