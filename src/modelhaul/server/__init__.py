"""``modelhaul serve``: one process that owns a DownloadManager and the model store.

    security.py  who may call (token, Host, Origin) and where clients may write; no web imports
    persist.py   the queue on disk (SQLite), so unfinished downloads resume after a restart
    jobs.py      a download (a URL, or a model over many files) and its JSON view; no I/O
    stream.py    the event stream: rising seq, one bounded queue per subscriber
    resolve.py   where a model pull's files come from: inline manifest, manifest URL, hf://
    service.py   owns the manager, the store and the queue; steers downloads, publishes events
    app.py       FastAPI: REST under /api, /ws and /events, the page at /
    runner.py    uvicorn: bind, serve, end the streams on shutdown
    static/      the web page: one HTML file, vanilla JS, CSS; no build step

FastAPI and uvicorn come with the ``server`` extra; only ``app.py`` and ``runner.py`` import
them, so importing this package costs nothing.
"""
