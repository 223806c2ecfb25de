"""One file's transfer: probe, plan, workers, progress, publish."""
