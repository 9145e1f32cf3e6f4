"""A simulated fleet of vLLM servers: real HTTP servers driven by a modelled engine."""
