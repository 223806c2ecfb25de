"""One file's transfer: downloader (the face, the lock, clean restarts), probe, plan, workers
(+ autoscale), streams (the receive paths), progress, publish; transfer holds the state."""
