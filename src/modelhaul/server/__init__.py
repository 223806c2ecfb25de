"""``modelhaul serve``: one process that owns a DownloadManager and the model store.

    security.py  who may call (token, Host, Origin) and where clients may write; no web imports
    persist.py   the queue on disk (SQLite), so unfinished downloads resume after a restart
    service.py   downloads with stable ids, model pulls, the store, and the event stream
    app.py       FastAPI: REST under /api, /ws and /events, the page at /
    runner.py    uvicorn: bind, serve, end the streams on shutdown
    static/      the web page: one HTML file, vanilla JS, CSS; no build step

FastAPI and uvicorn come with the ``server`` extra; only ``app.py`` and ``runner.py`` import
them, so importing this package costs nothing.
"""
