"""modelhaul: fast, resumable, verified downloads of ML model files."""
