"""``modelhaul serve``: one process that owns a DownloadManager and the model store.

    security.py        who may call (token, Host, Origin) and where clients may write (no web)
    peer.py            which local user holds the other end of a loopback connection
    persist.py         the queue on disk (SQLite), so unfinished downloads resume after a restart
    jobs.py            a download (a URL, or a model over many files) and its JSON view; no I/O
    stream.py          the event stream: rising seq, one bounded queue per subscriber
    resolve.py         where a model pull's files come from: inline manifest, manifest URL, hf://
    service.py         the Service: lifecycle and steering, made of job_runner and fanout
    job_runner.py        adding, restoring, starting and finishing downloads in the manager
    fanout.py            snapshots, subscriptions, the manager's events per download
    store_ops.py       the store as the service shows it: ls, pin, remove, gc, in one thread
    schemas.py         the API's request and response bodies (pydantic, with limits)
    error_handlers.py  every error answered in one shape, its status from its category
    guard.py           the middleware in front of everything: Host, Origin, token, body size
    routes/            one APIRouter per area: health, downloads, pulls, store, events, page
    app.py             create_app: the routers, the guard and the error handlers assembled
    runner.py          uvicorn: bind, serve, end the streams on shutdown
    static/            the web page: one HTML file, vanilla JS, CSS; no build step

FastAPI and uvicorn come with the ``server`` extra; only the web modules (app, routes, schemas,
guard, error_handlers, runner) import them, so importing this package costs nothing.
"""
