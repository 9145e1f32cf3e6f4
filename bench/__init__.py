"""Benchmarks, load generation and the vLLM simulator."""
