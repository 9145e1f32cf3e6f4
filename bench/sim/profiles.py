"""Engine profiles: step-time coefficients and capacity limits of one simulated server.

Step time in microseconds =
    beta0 + beta1 * (prefill tokens in the step) + beta2 * (decode tokens in the step)
          + beta3 * (context tokens read by the step's decodes)
times a seeded lognormal noise factor.

beta0..beta2 for the GPU profiles are the BLIS fits to vLLM 0.8.4 (Llama-3.1-8B on H100 and
A100, Llama-3.3-70B on H100 with TP4 and TP8). Those fits have no context term, and alone they
put the 8B/H100 engine at ~9.6k output tok/s when saturated by a ShareGPT-like mix, well above
the published 5.1-5.8k (MLPerf, vLLM 0.10). beta3 adds attention's cost: the time to read one
token's KV cache at the GPUs' HBM bandwidth, divided by an effective-bandwidth fraction of
0.26, the one value that brings that saturated throughput to 5.8k tok/s
(bench/reports/sim_calibration.md). The same fraction is used for every profile.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

_KIB = 1024
_H100_BW = 3.35e12  # bytes/s, H100 SXM HBM3
_A100_BW = 2.0e12  # bytes/s, A100 80GB HBM2e


_EFFECTIVE_BANDWIDTH = 0.26  # fraction of peak HBM bandwidth that decode attention achieves


def _kv_read_us(kv_bytes_per_token: float, bandwidth: float) -> float:
    return kv_bytes_per_token / (bandwidth * _EFFECTIVE_BANDWIDTH) * 1e6


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    beta0_us: float
    beta1_us: float
    beta2_us: float
    beta3_us: float = 0.0
    noise_cv: float = 0.03
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    kv_blocks: int = 26_000
    block_size: int = 16
    max_model_len: int = 32_768

    def step_seconds(
        self, prefill_tokens: int, decode_tokens: int, decode_context: int = 0
    ) -> float:
        micros = (
            self.beta0_us
            + self.beta1_us * prefill_tokens
            + self.beta2_us * decode_tokens
            + self.beta3_us * decode_context
        )
        return micros / 1e6

    def scaled(self, factor: float) -> Profile:
        """The same engine made ``factor`` times slower (factor < 1: faster)."""
        return replace(
            self,
            beta0_us=self.beta0_us * factor,
            beta1_us=self.beta1_us * factor,
            beta2_us=self.beta2_us * factor,
            beta3_us=self.beta3_us * factor,
        )

    @property
    def kv_tokens(self) -> int:
        return self.kv_blocks * self.block_size


# KV cache: ~128 KiB per token for Llama-3-8B and ~320 KiB for 70B. Capacity: what is left of
# 80 GB per GPU after the weights (8B: ~400k tokens; 70B TP4: ~600k; TP8: ~1.6M).
PROFILES: dict[str, Profile] = {
    "llama8b-h100": Profile(
        "llama8b-h100",
        5752.7,
        17.25,
        6.00,
        _kv_read_us(128 * _KIB, _H100_BW),
        kv_blocks=26_000,
    ),
    "llama8b-a100": Profile(
        "llama8b-a100",
        16441.5,
        47.84,
        18.21,
        _kv_read_us(128 * _KIB, _A100_BW),
        kv_blocks=26_000,
    ),
    "llama70b-h100-tp4": Profile(
        "llama70b-h100-tp4",
        12601.3,
        76.42,
        66.84,
        _kv_read_us(320 * _KIB, 4 * _H100_BW),
        kv_blocks=38_000,
    ),
    "llama70b-h100-tp8": Profile(
        "llama70b-h100-tp8",
        14140.8,
        10.03,
        19.40,
        _kv_read_us(320 * _KIB, 8 * _H100_BW),
        kv_blocks=100_000,
    ),
    # Llama-3.1-8B with 4-bit weights (AWQ/GPTQ, W4A16 Marlin kernels) on one H100: derived,
    # not fitted. A step's fixed cost beta0, which at small batches is the time to stream the
    # weights from HBM, shrinks to 0.55x (decode ~1.8x faster at low batch: the 1.5-2x of
    # published W4A16 figures; Marlin's kernel reaches near 4x on the linear layers alone up
    # to batch 16-32, diluted here by attention and everything else a step does). Per-token
    # compute (beta1, beta2) stays: W4A16 dequantizes to 16-bit and computes there, so prefill
    # and large batches gain nothing. The KV cache keeps 16-bit entries (beta3 as is) and
    # grows by the ~10 GB the smaller weights free (26k -> 31k blocks).
    "llama8b-h100-w4a16": Profile(
        "llama8b-h100-w4a16",
        5752.7 * 0.55,
        17.25,
        6.00,
        _kv_read_us(128 * _KIB, _H100_BW),
        kv_blocks=31_000,
    ),
    # No modelled compute at all: for measuring what a gateway adds.
    "instant": Profile("instant", 0.0, 0.0, 0.0, noise_cv=0.0),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown profile {name!r}; known: {known}") from None
