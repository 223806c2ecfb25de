"""Checks of everything a download depends on.

checks.py holds the ``Check`` record and ``DoctorConfig``; network.py the proxy, the endpoint
(DNS, TCP, TLS, an HTTP answer) and the clock; hub.py the token and the source; filesystem.py
the cache directory; run.py ``run_doctor``, which runs them all. HTTP goes through
``http.probe``: nothing here imports aiohttp.
"""
