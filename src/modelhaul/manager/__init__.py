"""Many downloads at once: the queue, limits, pause/resume/cancel, and events.

    downloads   DownloadManager: add, steer, observe; runs each file's task; partial files
    handle      DownloadHandle: what add returns, to steer and await one download
    tasks       the record of one download (Task) and its snapshot (TaskInfo)
    queue       which queued download starts next, whether there is room, idleness
    limits      connections per file, each download's token bucket, fair share of a global cap
    fanout      callbacks, event streams, and the aggregate ("total") event
    claims      one file, one download: path claims, shared downloads, second names

Import from the module that defines a name; this package re-exports nothing.
"""
