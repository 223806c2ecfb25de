"""Access through the mirror: the caller's own token goes upstream and upstream decides; the
service's tokens never stand in for a caller (issue 16)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from fakehub import FakeHub
from modelhaul.mirror.access import ACCEPT_TTL_S, AccessCache
from modelhaul.server.security import AccessPolicy
from modelhaul.store.repo import RepoStore
from server_harness import ServerThread, point_hub_at_mirror, service_config

GOOD = "hf_good_token"
WEIGHTS = bytes(range(256)) * 2048  # 512 KiB, LFS
FILES = {"config.json": b"{}", "model.safetensors": WEIGHTS}
SERVICE_TOKEN = "s" * 40


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def gated(hub: FakeHub) -> str:
    hub.set_token(GOOD)
    return hub.add_repo("org/gated", FILES, gated=True)


@pytest.fixture
def mirror(hub: FakeHub, tmp_path: Path) -> Iterator[ServerThread]:
    # The service has a Hub token of its own: the mirror must never use it for a caller.
    config = service_config(tmp_path, hf_endpoint=hub.endpoint, hf_token=GOOD)
    with ServerThread(config) as server:
        yield server


URL = "/hf/org/gated/resolve/main/model.safetensors"


def test_the_refused_token_gets_no_file_the_good_one_cached(
    hub: FakeHub, gated: str, mirror: ServerThread
) -> None:
    with mirror.client() as c:
        good = c.get(URL, headers=bearer(GOOD))
        bad = c.get(URL, headers=bearer("hf_someone_else"))
        bad_head = c.head(URL, headers=bearer("hf_someone_else"))
        anonymous = c.get(URL)
    assert good.status_code == 200 and good.content == WEIGHTS
    assert bad.status_code == 401 and bad.content != WEIGHTS
    assert bad_head.status_code == 401
    assert anonymous.status_code == 401
    assert anonymous.headers["X-Error-Code"] == "GatedRepo"
    assert hub.cdn_bytes(hashlib.sha256(WEIGHTS).hexdigest()) == len(WEIGHTS)
    # Each caller's own Authorization went upstream, and the service's token for nobody else.
    resolves = [r for r in hub.requests if r.site == "hub" and "/resolve/" in r.path]
    carried = [r.authorization for r in resolves]
    assert f"Bearer {GOOD}" in carried and "Bearer hf_someone_else" in carried
    assert None in carried, "the anonymous caller was sent anonymously"
    cdn = [r for r in hub.requests if r.site == "cdn"]
    assert cdn and all(r.authorization is None for r in cdn), "no token to another host"


def test_with_the_upstream_down_only_a_recently_accepted_caller_is_served(
    hub: FakeHub, gated: str, mirror: ServerThread
) -> None:
    with mirror.client() as c:
        assert c.get(URL, headers=bearer(GOOD)).content == WEIGHTS
        hub.stop()
        again = c.get(URL, headers=bearer(GOOD))
        other = c.get(URL, headers=bearer("hf_someone_else"))
        anonymous = c.head(URL)
    assert again.status_code == 200 and again.content == WEIGHTS
    assert other.status_code == 401 and other.content != WEIGHTS
    assert anonymous.status_code == 401


def test_off_loopback_the_mirror_needs_no_service_token_and_never_forwards_it(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_repo("org/public", FILES)
    policy = AccessPolicy(bind_host="0.0.0.0", token=SERVICE_TOKEN)
    config = service_config(tmp_path, hf_endpoint=hub.endpoint)
    with ServerThread(config, policy) as server, server.client() as c:
        info = c.get("/hf/api/models/org/public")
        file = c.get("/hf/org/public/resolve/main/config.json", headers=bearer(SERVICE_TOKEN))
        queue = c.get("/api/downloads")
    assert info.status_code == 200
    assert file.status_code == 200 and file.content == b"{}"
    assert queue.status_code == 401, "the queue API keeps its rule"
    assert all(SERVICE_TOKEN not in (r.authorization or "") for r in hub.requests)


def test_an_acceptance_is_remembered_sixty_seconds_by_a_hash_of_the_token(tmp_path: Path) -> None:
    now = [1000.0]
    cache = AccessCache(clock=lambda: now[0])  # the mirror's own TTL
    rs = RepoStore(tmp_path, "org/gated")
    cache.accept(f"Bearer {GOOD}", rs)
    assert cache.accepted(f"Bearer {GOOD}", rs)
    assert not cache.accepted("Bearer hf_someone_else", rs)
    assert not cache.accepted(None, rs), "a token's yes is not an anonymous caller's"
    now[0] += 59.9
    assert cache.accepted(f"Bearer {GOOD}", rs)
    now[0] += 0.2
    assert not cache.accepted(f"Bearer {GOOD}", rs), "remembered at most 60 s"
    assert GOOD not in repr(vars(cache)), "the token itself is never kept"
    assert ACCEPT_TTL_S == 60


def test_stock_clients_with_two_tokens(
    hub: FakeHub,
    gated: str,
    mirror: ServerThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point_hub_at_mirror(mirror, tmp_path, monkeypatch)
    good = hf_hub_download(
        "org/gated", "model.safetensors", token=GOOD, cache_dir=tmp_path / "good"
    )
    assert Path(good).read_bytes() == WEIGHTS
    with pytest.raises(HfHubHTTPError) as refused:
        hf_hub_download(
            "org/gated", "model.safetensors", token="hf_someone_else", cache_dir=tmp_path / "bad"
        )
    assert refused.value.response.status_code in (401, 403)
    assert not list((tmp_path / "bad").rglob("model.safetensors"))
    assert hub.cdn_bytes(hashlib.sha256(WEIGHTS).hexdigest()) == len(WEIGHTS)
