"""HTTP handlers: thin layers that parse, hand over and relay."""
