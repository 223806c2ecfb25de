"""What the service's download view says, as the web page reads it: whether a failure is
permanent and the retry route for it, how many connections a download holds, and whether a pull
found everything in the store already. A real service, origin and fake Hub, over REST and SSE."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from fakehub import FakeHub
from helpers import blob
from origin import Fault, Origin
from server_harness import EventReader, KiB, MiB, ServerThread, service_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(tmp_path: Path, hub: FakeHub) -> Iterator[ServerThread]:
    config = service_config(tmp_path, hf_endpoint=hub.endpoint)
    # A fixed two connections, so a file larger than the first request uses both.
    segments = replace(config.download.segments, connections=2)
    config = replace(config, download=replace(config.download, segments=segments))
    with ServerThread(config) as s:
        yield s


@pytest.fixture
def api(server: ServerThread) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def events(server: ServerThread) -> Iterator[EventReader]:
    reader = EventReader(server.url)
    yield reader
    reader.close()


def test_a_failure_says_whether_it_is_permanent_and_can_be_retried(
    server: ServerThread, api: httpx.Client, events: EventReader, origin: Origin
) -> None:
    data = blob(64 * KiB, 3)
    job = api.post("/api/downloads", json={"url": origin.url("late.bin"), "out": "late.bin"})
    job_id = job.json()["id"]
    failed = events.wait_download(job_id, "failed")
    assert failed["error"]["category"] == "not_found"
    assert failed["permanent"] is True  # another attempt alone would fail the same way
    assert api.get(f"/api/downloads/{job_id}").json()["permanent"] is True

    # The cause fixed, retry runs the same request to the same place.
    origin.add_file("late.bin", data)
    retried = api.post(f"/api/downloads/{job_id}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] != "failed" and retried.json()["permanent"] is False
    done = events.wait_download(job_id, "completed")
    assert done["path"] == str((server.config.download_dir / "late.bin").resolve())
    assert (server.config.download_dir / "late.bin").read_bytes() == data

    # Only a failed download can be retried.
    again = api.post(f"/api/downloads/{job_id}/retry")
    assert again.status_code == 409 and again.json()["error"]["category"] == "client_error"
    assert api.post("/api/downloads/42/retry").status_code == 404

    # A server error is not permanent: resuming may well succeed.
    origin.add_file("busy.bin", data)
    origin.set_default("busy.bin", Fault(status=503))
    busy = api.post("/api/downloads", json={"url": origin.url("busy.bin"), "out": "busy.bin"})
    busy_failed = events.wait_download(busy.json()["id"], "failed")
    assert busy_failed["error"]["category"] == "server_error"
    assert busy_failed["permanent"] is False


def test_the_view_counts_open_connections(
    api: httpx.Client, events: EventReader, origin: Origin
) -> None:
    data = blob(10 * MiB, 4)  # larger than the first request (8 MiB), so it splits
    origin.add_file("slow.bin", data)
    origin.set_default("slow.bin", Fault(rate_bytes_per_s=256 * KiB))
    job_id = api.post("/api/downloads", json={"url": origin.url("slow.bin")}).json()["id"]
    two = events.wait_for(
        lambda e: (
            e["event"] == "progress" and e["id"] == job_id and e["download"]["connections"] == 2
        ),
        what="progress on two connections",
    )
    assert two["download"]["state"] == "running"
    api.post(f"/api/downloads/{job_id}/pause").raise_for_status()
    paused = events.wait_download(job_id, "paused")
    assert paused["connections"] == 0  # nothing open while paused
    counts = {e["download"]["connections"] for e in events.events if e["event"] == "progress"}
    assert counts <= {0, 1, 2}  # never more than were allowed


def test_a_pull_of_a_model_already_in_the_store_says_so(
    api: httpx.Client, events: EventReader, hub: FakeHub
) -> None:
    hub.add_repo("org/tiny", {"config.json": b'{"a": 1}', "w.bin": blob(200 * KiB, 5)})
    first = api.post("/api/pulls", json={"source": "hf://org/tiny"}).json()
    fetched = events.wait_download(first["id"], "completed")
    assert fetched["already_present"] is False and fetched["result"]["bytes_fetched"] > 0

    second = api.post("/api/pulls", json={"source": "hf://org/tiny"}).json()
    present = events.wait_download(second["id"], "completed")
    assert present["already_present"] is True
    assert present["result"]["fetched"] == [] and present["result"]["files"] == 2
    assert api.get(f"/api/downloads/{second['id']}").json()["already_present"] is True
