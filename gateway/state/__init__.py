"""Shared state: the Store protocol, its in-process and Redis implementations, and keys."""
