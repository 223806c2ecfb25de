"""What the service and its page show of a failed download is in the service's words, worded
from the error's structured fields, never the library's (``headers=...``, ``SegmentPolicy``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelhaul.remedies import LIBRARY_WORDS, Remedy
from modelhaul.server.words import SERVICE_WORDS
from origin import Fault, Origin
from server_harness import EventReader, ServerThread, service_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(service_config(tmp_path)) as s:
        yield s


def test_a_failed_download_is_told_in_the_service_words(
    server: ServerThread, origin: Origin
) -> None:
    origin.add_file("private.bin", b"x" * 1024)
    origin.set_default("private.bin", Fault(status=401))
    events = EventReader(server.url)
    try:
        with server.client() as api:
            resp = api.post("/api/downloads", json={"url": origin.url("private.bin")})
            assert resp.status_code == 201, resp.text
            job = resp.json()
            failed = events.wait_download(job["id"], "failed")
            state = events.wait_for(
                lambda e: e["event"] == "state" and e["id"] == job["id"] and "error" in e,
                what="the failed state event",
            )
            listed = api.get(f"/api/downloads/{job['id']}").json()
    finally:
        events.close()
    said = SERVICE_WORDS[Remedy.SEND_CREDENTIALS]
    assert said != LIBRARY_WORDS[Remedy.SEND_CREDENTIALS]
    for error in (failed["error"], state["error"], listed["error"]):
        assert error["category"] == "auth"
        assert error["hint"] == said, error
