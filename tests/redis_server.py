"""The test suite's redis-server: the benchmarks' helper, one implementation."""

from bench.procs import free_port, redis_server

__all__ = ["free_port", "redis_server"]
