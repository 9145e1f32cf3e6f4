"""Backend engines behind one protocol. vLLM first; another engine is a sibling module."""
