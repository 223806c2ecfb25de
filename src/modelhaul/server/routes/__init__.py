"""The API's routes, one APIRouter per area; ``app.create_app`` includes them all.

deps.py       the service and the access policy of the app a request came to
health.py     /api/health, /api/state, /api/limit
downloads.py  /api/downloads: list, add, steer, forget
pulls.py      /api/pulls: model pulls into the store
store.py      /api/models: the store, pins, removal, gc
events.py     /ws and /events: a snapshot, then every event
page.py       the web page at / (its files are mounted at /static by the app)
"""
