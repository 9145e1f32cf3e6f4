"""The side-by-side report: a partial re-run replaces only its own rows, and ratios are taken
against the best peer of the same load."""

from __future__ import annotations

from typing import Any

from bench.compare import markdown, merge


def _row(goodput: float) -> dict[str, Any]:
    return {
        "goodput_rps": goodput,
        "attainment_offered": goodput / 100,
        "attainment_admitted": goodput / 100,
        "rejection_rate": 0.0,
        "failed": 0,
        "ttft_p99_ms": 100.0,
        "tpot_p99_ms": 20.0,
    }


def _block(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "capacity_rps": 60.0,
        "max_num_seqs": 32,
        "span_s": 6.0,
        "dilation": 8.0,
        "results": results,
    }


def test_a_partial_rerun_replaces_only_its_rows() -> None:
    old = _block({"1.5": {"sluice": _row(50), "vllm-router-rr": _row(40)}, "2": {}})
    new = _block({"1.5": {"sluice": _row(90)}})
    merged = merge(old, new)
    assert merged["results"]["1.5"]["sluice"]["goodput_rps"] == 90
    assert merged["results"]["1.5"]["vllm-router-rr"]["goodput_rps"] == 40
    assert "2" in merged["results"]


def test_ratios_are_against_the_best_peer_not_direct() -> None:
    rows = {
        "sluice": _row(90),
        "vllm-router-rr": _row(40),
        "smg-least-load": _row(45),
        "direct": _row(80),  # not a peer gateway: never the reference
    }
    text = markdown({"goodput": _block({"1.5": rows})})
    sluice_line = next(line for line in text.splitlines() if line.startswith("| 1.5x | Sluice"))
    assert "| 2.00x |" in sluice_line  # 90 / 45
    smg_line = next(line for line in text.splitlines() if line.startswith("| 1.5x | SMG"))
    assert "| 1.00x |" in smg_line
