"""The REST API and the live event streams, against a real service on 127.0.0.1 (uvicorn in a
thread) downloading from the real fault-injecting origin and the fake Hub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from fakehub import FakeHub
from helpers import blob, sha
from origin import Fault, Origin
from server_harness import (
    FINAL,
    EventReader,
    KiB,
    MiB,
    ServerThread,
    service_config,
    wait_state,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(tmp_path: Path, hub: FakeHub) -> Iterator[ServerThread]:
    with ServerThread(service_config(tmp_path, hf_endpoint=hub.endpoint)) as s:
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


def ws_url(server: ServerThread) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


def test_health_and_openapi(api: httpx.Client) -> None:
    assert api.get("/api/health").json() == {
        "service": "modelhaul",
        "version": "0.1.0",
        "token_required": False,
        "local_paths": True,  # this test runs as the service's user, over loopback
    }
    schema = api.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [
        ("/api/downloads", "get"),
        ("/api/downloads", "post"),
        ("/api/pulls", "post"),
        ("/api/downloads/{download_id}", "get"),
        ("/api/downloads/{download_id}", "delete"),
        ("/api/downloads/{download_id}/pause", "post"),
        ("/api/downloads/{download_id}/resume", "post"),
        ("/api/downloads/{download_id}/cancel", "post"),
        ("/api/downloads/{download_id}/priority", "put"),
        ("/api/limit", "get"),
        ("/api/limit", "put"),
        ("/api/models", "get"),
        ("/api/models/pin", "post"),
        ("/api/models/unpin", "post"),
        ("/api/models/remove", "post"),
        ("/api/models/gc", "post"),
        ("/api/state", "get"),
        ("/events", "get"),
    ]:
        assert method in paths[path], (method, path)


def test_url_download_and_event_order(
    server: ServerThread, api: httpx.Client, events: EventReader, origin: Origin
) -> None:
    data = blob(3 * MiB, 1)
    origin.add_file("a.bin", data)
    resp = api.post("/api/downloads", json={"url": origin.url("a.bin"), "out": "a.bin"})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["kind"] == "url" and job["name"] == "a.bin"
    done = events.wait_download(job["id"], "completed")
    assert done["bytes_done"] == done["total"] == len(data)
    assert done["result"]["sha256"] == sha(data)
    assert (server.config.download_dir / "a.bin").read_bytes() == data

    # Order: snapshot first, seq strictly rising, the download announced before its files'
    # events, running before progress, progress before completed.
    seqs = [e["seq"] for e in events.events]
    assert events.events[0]["event"] == "snapshot"
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    mine = [e for e in events.events[1:] if e.get("id") == job["id"] or _view_id(e) == job["id"]]
    kinds = [(e["event"], e.get("state") or _view_state(e)) for e in mine]
    first_download = kinds.index(("download", kinds[0][1]))
    assert first_download == 0, kinds
    running = kinds.index(("state", "running"))
    first_progress = next(i for i, k in enumerate(kinds) if k[0] == "progress")
    completed = kinds.index(("state", "completed"))
    assert running < first_progress < completed, kinds
    assert kinds[-1] == ("download", "completed"), kinds
    state_event = mine[completed]
    assert state_event["task"] and state_event["result"]["sha256"] == sha(data)

    listed = api.get("/api/downloads").json()["downloads"]
    assert [d["id"] for d in listed] == [job["id"]]
    got = api.get(f"/api/downloads/{job['id']}").json()
    assert got["state"] == "completed" and got["path"] == str(
        (server.config.download_dir / "a.bin").resolve()
    )

    # Asking for the same URL and name again after completion starts a new download record.
    assert api.delete(f"/api/downloads/{job['id']}").status_code == 204
    events.wait_for(lambda e: e["event"] == "removed" and e["id"] == job["id"], what="removed")
    assert api.get(f"/api/downloads/{job['id']}").status_code == 404
    assert api.get("/api/downloads").json()["downloads"] == []


def _view_id(event: dict[str, Any]) -> str | None:
    view = event.get("download")
    return view.get("id") if isinstance(view, dict) else None


def _view_state(event: dict[str, Any]) -> str | None:
    view = event.get("download")
    return view.get("state") if isinstance(view, dict) else None


def test_pause_resume_priority_cancel(
    server: ServerThread, api: httpx.Client, events: EventReader, origin: Origin
) -> None:
    data = blob(4 * MiB, 2)
    origin.add_file("slow.bin", data)
    origin.set_default("slow.bin", Fault(rate_bytes_per_s=512 * KiB))
    job = api.post("/api/downloads", json={"url": origin.url("slow.bin"), "out": "slow.bin"}).json()
    origin.wait_bytes("slow.bin", 256 * KiB)

    paused = api.post(f"/api/downloads/{job['id']}/pause").json()
    assert paused["paused"] is True
    view = events.wait_download(job["id"], "paused")
    origin.wait_idle()  # the origin stopped serving: no response in flight
    stopped_at = origin.bytes_served("slow.bin")
    assert stopped_at < len(data)
    assert view["bytes_done"] > 0
    assert api.post(f"/api/downloads/{job['id']}/pause").json()["state"] == "paused"

    bumped = api.put(f"/api/downloads/{job['id']}/priority", json={"priority": 7}).json()
    assert bumped["priority"] == 7
    assert origin.bytes_served("slow.bin") == stopped_at  # still nothing while paused

    api.post(f"/api/downloads/{job['id']}/resume").raise_for_status()
    events.wait_for(
        lambda e: (
            e["event"] == "download"
            and e["download"]["id"] == job["id"]
            and e["download"]["state"] == "running"
            and e["seq"] > view_seq(events, job["id"], "paused")
        ),
        what="running again",
    )
    origin.wait_bytes("slow.bin", stopped_at + 128 * KiB)
    resumed_ranges = origin.ranges_served("slow.bin")
    assert resumed_ranges[-1][0] > 0  # it resumed, it did not start over

    cancelled = api.post(f"/api/downloads/{job['id']}/cancel")
    assert cancelled.status_code == 200
    view = events.wait_download(job["id"], "cancelled")
    assert view["error"]["category"] == "cancelled"
    folder = server.config.download_dir
    assert not any(p.name.startswith("slow.bin") for p in folder.iterdir()), list(folder.iterdir())
    for action in ("pause", "resume", "cancel"):
        r = api.post(f"/api/downloads/{job['id']}/{action}")
        assert r.status_code == 409, (action, r.text)
        assert r.json()["error"]["category"] == "client_error"


def test_results_count_the_bytes_each_download_received(
    server: ServerThread, api: httpx.Client, events: EventReader, origin: Origin
) -> None:
    data = blob(3 * MiB, 3)
    origin.add_file("counted.bin", data)
    origin.set_default("counted.bin", Fault(rate_bytes_per_s=1 * MiB))
    body = {"url": origin.url("counted.bin"), "out": "counted.bin"}
    job = api.post("/api/downloads", json=body).json()
    origin.wait_bytes("counted.bin", 512 * KiB)
    api.post(f"/api/downloads/{job['id']}/pause").raise_for_status()
    # The manager's own "paused": a resume while the transfer still winds down is lost.
    events.wait_for(
        lambda e: e["event"] == "state" and e["id"] == job["id"] and e["state"] == "paused",
        what="the transfer paused",
    )
    origin.set_default("counted.bin", None)
    api.post(f"/api/downloads/{job['id']}/resume").raise_for_status()
    first = events.wait_download(job["id"], "completed")["result"]
    # The run before the pause received bytes too.
    assert first["resumed_from"] > 0
    assert len(data) <= first["bytes_transferred"] <= origin.bytes_served("counted.bin")

    again = api.post("/api/downloads", json=body).json()
    second = events.wait_download(again["id"], "completed")["result"]
    assert second["size"] == len(data) and second["bytes_transferred"] == 0


def view_seq(events: EventReader, download_id: str, state: str) -> int:
    event = events.wait_for(
        lambda e: (
            e["event"] == "download"
            and e["download"]["id"] == download_id
            and e["download"]["state"] == state
        ),
        what=f"{download_id} {state}",
    )
    return int(event["seq"])


def test_late_websocket_client_gets_a_snapshot_first(
    server: ServerThread, api: httpx.Client, origin: Origin
) -> None:
    data = blob(512 * KiB, 3)
    origin.add_file("late.bin", data)
    job = api.post(
        "/api/downloads", json={"url": origin.url("late.bin"), "out": "late.bin", "paused": True}
    ).json()
    assert job["state"] == "paused"
    with ws_connect(ws_url(server), open_timeout=10) as ws:
        snapshot = json.loads(ws.recv(timeout=10))
        assert snapshot["event"] == "snapshot"
        assert [(d["id"], d["state"]) for d in snapshot["downloads"]] == [(job["id"], "paused")]
        assert snapshot["limit"] == {"rate_bytes_per_s": None}
        assert snapshot["store"]["models"] == []
        api.post(f"/api/downloads/{job['id']}/resume").raise_for_status()
        seen = []
        while not seen or seen[-1] != "completed":
            event = json.loads(ws.recv(timeout=15))
            assert event["seq"] > snapshot["seq"]
            if event["event"] == "download":
                seen.append(event["download"]["state"])
        assert seen[0] in ("queued", "running") and seen[-1] == "completed"
    assert (server.config.download_dir / "late.bin").read_bytes() == data


def test_two_streams_see_the_same_changes(
    server: ServerThread, api: httpx.Client, origin: Origin
) -> None:
    origin.add_file("two.bin", blob(64 * KiB, 4))
    first = EventReader(server.url)
    second = EventReader(server.url)
    try:
        job = api.post("/api/downloads", json={"url": origin.url("two.bin"), "paused": True}).json()
        api.put(f"/api/downloads/{job['id']}/priority", json={"priority": -3}).raise_for_status()
        seen = [
            reader.wait_for(
                lambda e: e["event"] == "download" and e["download"]["priority"] == -3,
                what="the priority change",
            )
            for reader in (first, second)
        ]
        assert seen[0] == seen[1]  # the same event, same seq, same view
        histories = [
            [(e["seq"], e["event"]) for e in r.events[1:] if e["seq"] <= seen[0]["seq"]]
            for r in (first, second)
        ]
        assert histories[0] == histories[1]
    finally:
        first.close()
        second.close()


def test_speed_limit(api: httpx.Client, events: EventReader) -> None:
    assert api.get("/api/limit").json() == {"rate_bytes_per_s": None}
    assert api.put("/api/limit", json={"rate": "1M"}).json() == {"rate_bytes_per_s": MiB}
    events.wait_for(lambda e: e["event"] == "limit" and e["rate_bytes_per_s"] == MiB, what="limit")
    assert api.get("/api/limit").json() == {"rate_bytes_per_s": MiB}
    assert api.put("/api/limit", json={"rate": 2048}).json() == {"rate_bytes_per_s": 2048}
    assert api.put("/api/limit", json={"rate": 0}).json() == {"rate_bytes_per_s": None}
    assert api.put("/api/limit", json={"rate": None}).json() == {"rate_bytes_per_s": None}
    assert api.put("/api/limit", json={"rate": "fast"}).status_code == 422
    huge = api.put("/api/limit", json={"rate": "99999999T"})
    assert huge.status_code == 400 and huge.json()["error"]["category"] == "invalid_input"
    assert api.put("/api/limit", json={"rate": -1}).status_code == 422
    assert api.put("/api/limit", json={"rate": 2**50}).status_code == 422


def test_pull_from_the_hub_and_manage_the_store(
    server: ServerThread, api: httpx.Client, events: EventReader, hub: FakeHub
) -> None:
    weights = blob(2 * MiB, 5)
    hub.add_repo("org/tiny", {"config.json": b'{"a": 1}', "model.safetensors": weights})
    hub.add_repo("org/other", {"config.json": b'{"b": 2}'})
    job = api.post("/api/pulls", json={"source": "hf://org/tiny", "priority": 2}).json()
    assert job["kind"] == "model" and job["name"] == "org/tiny" and job["priority"] == 2
    done = events.wait_download(job["id"], "completed", timeout_s=30)
    assert done["result"]["model"] == "org/tiny" and done["files"] == 2
    store_event = events.wait_for(
        lambda e: (
            e["event"] == "store" and any(m["name"] == "org/tiny" for m in e["store"]["models"])
        ),
        what="the store event",
    )
    assert store_event["store"]["free"] > 0
    other = api.post("/api/pulls", json={"source": "org/other"}).json()
    events.wait_download(other["id"], "completed", timeout_s=30)

    store = api.get("/api/models").json()
    models = {m["name"]: m for m in store["models"]}
    assert models["org/tiny"]["status"] == "ready"
    assert models["org/tiny"]["size"] >= len(weights)
    assert store["used"] >= len(weights) and store["free"] > 0

    pinned = api.post("/api/models/pin", json={"name": "org/tiny"}).json()
    assert pinned["pinned"] is True
    gc = api.post("/api/models/gc", json={"max_size": 0, "dry_run": True}).json()
    assert [m["name"] for m in gc["evicted"]] == ["org/other"]  # pinned ones stay
    assert api.post("/api/models/unpin", json={"name": "org/tiny"}).json()["pinned"] is False
    gc = api.post("/api/models/gc", json={"max_size": "1G"}).json()
    assert gc["evicted"] == [] and gc["fits"] is True

    removed = api.post("/api/models/remove", json={"name": "org/other"}).json()
    assert removed["freed"] > 0
    names = [m["name"] for m in api.get("/api/models").json()["models"]]
    assert names == ["org/tiny"]
    gone = api.post("/api/models/remove", json={"name": "org/other"})
    assert gone.status_code == 404 and gone.json()["error"]["category"] == "not_found"
    assert api.post("/api/models/pin", json={"name": "org/none"}).status_code == 404
    assert api.post("/api/models/pin", json={"name": "../etc"}).status_code == 422
    assert api.post("/api/models/pin", json={"name": "a--b/c"}).status_code == 400

    missing = api.post("/api/pulls", json={"source": "hf://org/missing"}).json()
    failed = events.wait_download(missing["id"], "failed", timeout_s=30)
    assert failed["error"]["category"] == "not_found"


def test_pull_an_inline_manifest(
    server: ServerThread, api: httpx.Client, events: EventReader, origin: Origin
) -> None:
    data = blob(300 * KiB, 6)
    origin.add_file("w.bin", data)
    manifest = {
        "name": "acme/widget",
        "files": [
            {"path": "w.bin", "size": len(data), "sha256": sha(data), "url": origin.url("w.bin")}
        ],
    }
    job = api.post("/api/pulls", json={"manifest": manifest}).json()
    assert job["source"] == "manifest:acme/widget"
    done = events.wait_download(job["id"], "completed")
    snapshot = Path(done["result"]["path"])
    assert (snapshot / "w.bin").read_bytes() == data
    bad = api.post("/api/pulls", json={"manifest": {"name": "x/y", "files": []}})
    assert bad.status_code == 400 and "files" in bad.json()["error"]["message"]
    escape = dict(manifest, files=[dict(manifest["files"][0], path="../../evil")])
    assert api.post("/api/pulls", json={"manifest": escape}).status_code == 400


def test_request_validation(api: httpx.Client, origin: Origin) -> None:
    origin.add_file("v.bin", b"v" * 10)
    url = origin.url("v.bin")
    cases: list[tuple[str, str, Any, int]] = [
        ("POST", "/api/downloads", {}, 422),
        ("POST", "/api/downloads", {"url": url, "extra": 1}, 422),
        ("POST", "/api/downloads", {"url": url, "priority": 5000}, 422),
        ("POST", "/api/downloads", {"url": url, "sha256": "abc"}, 422),
        ("POST", "/api/downloads", {"url": "ftp://host/x"}, 422),
        ("POST", "/api/downloads", {"url": "not a url"}, 422),
        ("POST", "/api/downloads", {"url": "http://?x"}, 400),
        ("POST", "/api/downloads", {"url": "http://host:99999/x"}, 400),
        ("POST", "/api/downloads", {"url": url, "out": ""}, 422),
        ("POST", "/api/pulls", {}, 422),
        ("POST", "/api/pulls", {"source": "hf://a/b", "manifest": {}}, 422),
        ("POST", "/api/pulls", {"source": "hf://bad name"}, 400),
        ("POST", "/api/pulls", {"source": "hf://a/b", "include": [""]}, 422),
        ("PUT", "/api/downloads/1/priority", {"priority": "high"}, 422),
        ("POST", "/api/models/gc", {"partial_age_s": -1}, 422),
        ("POST", "/api/models/gc", {"max_size": "lots"}, 422),
        ("POST", "/api/models/gc", {"max_size": "99999999T"}, 400),
        ("POST", "/api/models/remove", {"name": "a/b", "repo_type": "nope"}, 422),
    ]
    for method, path, body, status in cases:
        r = api.request(method, path, json=body)
        assert r.status_code == status, (method, path, body, r.status_code, r.text)
    for method, path in [
        ("GET", "/api/downloads/42"),
        ("POST", "/api/downloads/42/pause"),
        ("POST", "/api/downloads/42/resume"),
        ("POST", "/api/downloads/42/cancel"),
        ("DELETE", "/api/downloads/42"),
    ]:
        r = api.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["category"] == "not_found", path
    assert api.put("/api/downloads/42/priority", json={"priority": 1}).status_code == 404
    assert api.get("/api/downloads/not-an-id").status_code == 422
    big = api.post(
        "/api/downloads",
        content=b'{"url": "' + b"a" * (1024 * 1024 + 10) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert big.status_code == 413
    chunked = api.post(
        "/api/downloads",
        content=iter([b'{"url":', b'"x"}']),
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status_code == 411
    assert (
        api.post(
            "/api/downloads", content=b"{not json", headers={"Content-Type": "application/json"}
        ).status_code
        == 422
    )


def test_path_escapes_refused(
    server: ServerThread, api: httpx.Client, origin: Origin, tmp_path: Path
) -> None:
    origin.add_file("p.bin", b"payload")
    url = origin.url("p.bin")
    folder = server.config.download_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "link").symlink_to(outside, target_is_directory=True)
    (folder / "victim.bin").symlink_to(outside / "victim.bin")
    # Absolute paths: refused off loopback and from other users (test_honest_service), taken
    # from the service's own user, as here; the rest is refused from anyone.
    for out in [
        "../escape.bin",
        "a/../../escape.bin",
        "nul\x00.bin",
        "back\\slash.bin",
        "link/x.bin",
        "victim.bin",
        "\udcff.bin",
    ]:
        body = json.dumps({"url": url, "out": out})  # ASCII, so a lone surrogate can be sent
        r = api.post("/api/downloads", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422), (out, r.status_code, r.text)  # 422: not a string
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape.bin").exists()
    ok = api.post("/api/downloads", json={"url": url, "out": "nested/dir/p.bin"}).json()
    wait_state(api, ok["id"], FINAL)
    assert (folder / "nested" / "dir" / "p.bin").read_bytes() == b"payload"


def test_host_and_origin_checks(server: ServerThread, api: httpx.Client) -> None:
    port = server.url.rsplit(":", 1)[1]
    rebinding = api.get("/api/state", headers={"Host": f"evil.example:{port}"})
    assert rebinding.status_code == 403
    assert api.get("/", headers={"Host": "evil.example"}).status_code == 403
    assert api.get("/api/state", headers={"Host": f"localhost:{port}"}).status_code == 200
    foreign = api.put("/api/limit", json={"rate": 1}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    cross = api.put("/api/limit", json={"rate": 1}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert api.get("/api/limit").json() == {"rate_bytes_per_s": None}
    same = api.put("/api/limit", json={"rate": 1}, headers={"Origin": server.url})
    assert same.status_code == 200
    # Reading is fine cross-origin (no CORS headers, so a browser hides the answer).
    assert (
        "access-control-allow-origin"
        not in api.get("/api/state", headers={"Origin": "http://evil.example"}).headers
    )
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(ws_url(server), origin="http://evil.example", open_timeout=10)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    with ws_connect(ws_url(server), origin=server.url, open_timeout=10) as ws:  # type: ignore[arg-type]
        assert json.loads(ws.recv(timeout=10))["event"] == "snapshot"
    page = api.get("/")
    assert page.status_code == 200 and "<title>modelhaul</title>" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert api.get("/static/app.js").status_code == 200
    assert api.get("/static/../security.py").status_code == 404


def test_token_enforced(tmp_path: Path, origin: Origin) -> None:
    token = "t0ken-" * 8
    policy_server = ServerThread(
        service_config(tmp_path),
        # What '--require-token' (or any bind off loopback) yields; see test_server_security
        # for the bind-host decision itself.
        policy=__import__("modelhaul.server.security", fromlist=["AccessPolicy"]).AccessPolicy(
            bind_host="127.0.0.1", token=token
        ),
    )
    with policy_server as server, server.client() as api:
        assert api.get("/api/health").json()["token_required"] is True
        for method, path in [
            ("GET", "/api/state"),
            ("GET", "/api/downloads"),
            ("GET", "/api/models"),
            ("GET", "/api/limit"),
            ("GET", "/events"),
            ("PUT", "/api/limit"),
            ("POST", "/api/downloads"),
        ]:
            r = api.request(method, path, json={} if method != "GET" else None)
            assert r.status_code == 401, (method, path)
            assert r.headers["www-authenticate"] == "Bearer"
        assert api.get("/api/state", headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert api.get("/api/state", headers=auth).status_code == 200
        origin.add_file("t.bin", b"t" * 100)
        added = api.post("/api/downloads", json={"url": origin.url("t.bin")}, headers=auth)
        assert added.status_code == 201
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(ws_url(server), open_timeout=10)
        assert refused.value.response.status_code == 403
        with ws_connect(ws_url(server), additional_headers=auth, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["event"] == "snapshot"
        # The page: /?token= trades the token for an HttpOnly, SameSite=Strict cookie.
        assert api.get("/").status_code == 200
        login = api.get(f"/?token={token}", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert "modelhaul_token=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert api.get("/api/state").status_code == 200  # the client kept the cookie
        wrong = api.get("/?token=nope", follow_redirects=False)
        assert wrong.status_code == 303 and "set-cookie" not in wrong.headers
        # The cookie never lets another site drive the service.
        forged = api.put("/api/limit", json={"rate": 5}, headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403
