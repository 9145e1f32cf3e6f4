"""vLLM's metric families for one simulated server, with vLLM's names and labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bench.sim.engine import Engine, SimRequest

_LATENCY = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_ITL = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


class VllmMetrics:
    def __init__(self, engine: Engine, model: str, max_loras: int | None = None) -> None:
        self.registry = CollectorRegistry()
        self._engine = engine
        labels = {"engine": "0", "model_name": model}
        names = list(labels)
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=r)

        self.running = gauge("vllm:num_requests_running", "Requests in execution batches")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be processed")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 means 100 percent")
        self.waiting_by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Waiting requests by reason",
            [*names, "reason"],
            registry=r,
        )
        # vLLM labels this one by engine only, and puts the cache settings in labels.
        self.cache_info = Gauge(
            "vllm:cache_config_info",
            "Information of the cache config",
            ["engine", "block_size", "num_gpu_blocks"],
            registry=r,
        )
        self.cache_info.labels(
            "0", str(engine.profile.block_size), str(engine.profile.kv_blocks)
        ).set(1)
        if max_loras is not None:  # as vLLM with --enable-lora: the slots in a label
            self.lora_info = Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
                registry=r,
            )
            self.lora_info.labels(str(max_loras), "", "").set(1)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefill tokens processed", names, registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generation tokens processed", names, registry=r
        )
        self.preemptions = Counter(
            "vllm:num_preemptions", "Cumulative preemptions", names, registry=r
        )
        # As in vLLM: labelled by model and reason, not by engine.
        self.rejections = Counter(
            "vllm:admission_rejections",
            "Requests rejected at admission",
            ["model_name", "reason"],
            registry=r,
        )
        self.success = Counter(
            "vllm:request_success",
            "Successfully processed requests",
            [*names, "finished_reason"],
            registry=r,
        )
        for reason in ("stop", "length", "abort", "error", "repetition"):
            self.success.labels(*labels.values(), reason)
        self.prefix_queries = Counter(
            "vllm:prefix_cache_queries", "Prefix-cache queries (tokens)", names, registry=r
        )
        self.prefix_hits = Counter(
            "vllm:prefix_cache_hits", "Prefix-cache hits (tokens)", names, registry=r
        )
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token", _LATENCY)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Inter-token latency", _ITL)
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Mean time per output token of each request",
            _ITL,
        )
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End-to-end latency", _E2E)
        self.queue = histogram("vllm:request_queue_time_seconds", "Time in the waiting queue", _E2E)
        self.prefill = histogram("vllm:request_prefill_time_seconds", "Prefill phase time", _E2E)
        self.decode = histogram("vllm:request_decode_time_seconds", "Decode phase time", _E2E)
        self._labels = tuple(labels.values())
        self._model = model
        self._seen = {
            "prompt": 0,
            "generation": 0,
            "preemptions": 0,
            "rejected": 0,
            "aborted": 0,
            "prefix_queries": 0,
            "prefix_hits": 0,
        }

    def on_token(self, request: SimRequest, now: float) -> None:
        if request.last_token_at is None:
            self.ttft.labels(*self._labels).observe(now - request.arrival)
        else:
            self.itl.labels(*self._labels).observe(now - request.last_token_at)

    def on_finish(self, request: SimRequest, now: float) -> None:
        lbl = self._labels
        self.success.labels(*lbl, request.finish_reason).inc()
        self.e2e.labels(*lbl).observe(now - request.arrival)
        scheduled = request.scheduled_at if request.scheduled_at is not None else request.arrival
        first = request.first_token_at if request.first_token_at is not None else now
        self.queue.labels(*lbl).observe(scheduled - request.arrival)
        self.prefill.labels(*lbl).observe(first - scheduled)
        self.decode.labels(*lbl).observe(now - first)
        if request.generated > 1:
            self.tpot.labels(*lbl).observe((now - first) / (request.generated - 1))

    def exposition(self) -> bytes:
        engine, lbl = self._engine, self._labels
        self.running.labels(*lbl).set(len(engine.running))
        self.waiting.labels(*lbl).set(len(engine.waiting))
        self.waiting_by_reason.labels(*lbl, "capacity").set(len(engine.waiting))
        self.waiting_by_reason.labels(*lbl, "deferred").set(0)
        self.kv_usage.labels(*lbl).set(engine.kv_usage)
        c = engine.counters
        for key, counter, value in (
            ("prompt", self.prompt_tokens, c.prompt_tokens),
            ("generation", self.generation_tokens, c.generation_tokens),
            ("preemptions", self.preemptions, c.preemptions),
            ("prefix_queries", self.prefix_queries, c.prefix_queries),
            ("prefix_hits", self.prefix_hits, c.prefix_hits),
        ):
            counter.labels(*lbl).inc(value - self._seen[key])
            self._seen[key] = value
        self.rejections.labels(self._model, "max_num_queued_reqs").inc(
            c.rejected - self._seen["rejected"]
        )
        self._seen["rejected"] = c.rejected
        self.success.labels(*lbl, "abort").inc(c.aborted - self._seen["aborted"])
        self._seen["aborted"] = c.aborted
        return generate_latest(self.registry)
