"""The command line: argument parsing, environment, rendering. Nothing below imports this."""
