"""Many simulated servers in one process, each on its own port."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from bench.sim.lengths import LengthDistribution, LengthTable
from bench.sim.profiles import Profile
from bench.sim.server import SimServer


@dataclass(slots=True)
class RunningSim:
    server: SimServer
    runner: web.AppRunner
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_sim(server: SimServer, host: str = "127.0.0.1", port: int = 0) -> RunningSim:
    # Handlers are cancelled when their client disconnects, as in vLLM's server, so that a
    # dropped request frees its slot in the engine.
    runner = web.AppRunner(server.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    return RunningSim(server, runner, f"http://{host}:{bound}")


async def start_fleet(
    profiles: Sequence[Profile],
    *,
    model: str = "sim-model",
    seed: int = 0,
    host: str = "127.0.0.1",
    base_port: int = 0,
    lengths: LengthTable | None = None,
    distribution: LengthDistribution | None = None,
    priority_scheduling: bool = False,
    max_queued: int | None = None,
    prefix_caching: bool = True,
    prompt_tokens_details: bool = False,
    max_loras: int | None = None,
    lora_load_s: float = 0.0,
) -> list[RunningSim]:
    """One server per profile, seeded apart; ports base_port, base_port+1, ... (0: free ports).

    The servers share one lengths table (read-only)."""
    running: list[RunningSim] = []
    for index, profile in enumerate(profiles):
        server = SimServer(
            profile,
            model=model,
            seed=seed + index,
            lengths=lengths,
            distribution=distribution,
            priority_scheduling=priority_scheduling,
            max_queued=max_queued,
            prefix_caching=prefix_caching,
            prompt_tokens_details=prompt_tokens_details,
            max_loras=max_loras,
            lora_load_s=lora_load_s,
        )
        port = base_port + index if base_port else 0
        running.append(await start_sim(server, host, port))
    return running
