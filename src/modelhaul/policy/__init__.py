"""Pure policy: functions and small values with no I/O. Everything else may import these."""
