"""The engine: the executor loop over the run log."""
