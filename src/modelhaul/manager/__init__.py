"""Many downloads at once: the queue, limits, pause/resume/cancel, and events."""
