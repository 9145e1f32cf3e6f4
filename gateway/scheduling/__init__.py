"""Scheduling: the gateway queue, the placement policy and the guards."""
