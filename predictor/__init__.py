"""Output-length prediction for the SLO guards."""
