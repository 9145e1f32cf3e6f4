"""The virtual-time harness runs the gateway's scheduling code against the engine model."""

from __future__ import annotations

from bench.data import synthetic_prompts
from bench.sim.profiles import get_profile
from bench.virtual_gateway import run_virtual
from bench.workload import SCORPIO_CLASSES, Result, plan
from gateway.config import LatencyPrior, SchedulerConfig
from predictor import artifact


def test_every_request_is_answered_and_guards_keep_admitted_ones_on_target() -> None:
    samples = synthetic_prompts(400, seed=3)
    # 400 requests within 0.5 s on one backend: far beyond what it can serve in time.
    items = plan(
        samples, [i / 800 for i in range(400)], list(SCORPIO_CLASSES), seed=3, max_tokens=256
    )

    def run(scheduler: SchedulerConfig, max_in_flight: int) -> list[Result]:
        return run_virtual(
            items,
            profile=get_profile("llama8b-h100"),
            backends=1,
            scheduler=scheduler,
            max_in_flight=max_in_flight,
            prior=LatencyPrior(),
            lengths=artifact.load().model,
        )

    plain = run(SchedulerConfig(policy="least_loaded"), 10_000)
    guarded = run(SchedulerConfig(), 256)
    for results in (plain, guarded):
        assert len(results) == 400
        served = [r for r in results if r.status == 200]
        assert all(r.tokens > 0 and r.ttft_s is not None for r in served)
    assert all(r.status == 200 for r in plain)
    rejected = [r for r in guarded if r.status == 429]
    assert rejected
    assert {r.reason for r in rejected} <= {"ttft_unattainable", "tpot_unattainable"}

    def on_target(r: Result) -> bool:
        ttft, tpot = SCORPIO_CLASSES[r.slo_class]
        return (
            r.status == 200
            and r.ttft_s is not None
            and r.ttft_s * 1000 <= ttft
            and (r.tpot_s is None or r.tpot_s * 1000 <= tpot)
        )

    guarded_served = [r for r in guarded if r.status == 200]
    assert sum(map(on_target, guarded_served)) / len(guarded_served) > sum(
        map(on_target, plain)
    ) / len(plain)
