"""The web page shows the mirror's traffic live: bytes served to clients against bytes fetched
upstream, per model (issue 16). A real headless Chromium (as tests/server/test_web_ui.py), a
real service and the fake Hub; the REST view and the event stream carry the same numbers."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakehub import FakeHub
from server_harness import EventReader, ServerThread, service_config

MiB = 1024 * 1024
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
URL = "/hf/org/web/resolve/main/model.safetensors"
ROW = "#mirror-model-org--web"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def mirror(hub: FakeHub, tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(service_config(tmp_path, hf_endpoint=hub.endpoint)) as server:
        yield server


def fetch(base: str, into: list[bytes]) -> None:
    with httpx.Client(base_url=base, timeout=60) as c:
        into.append(c.get(URL).content)


def test_the_traffic_view_and_events_count_served_and_upstream_bytes(
    hub: FakeHub, mirror: ServerThread
) -> None:
    data = random.Random(31).randbytes(6 * MiB)
    hub.add_repo("org/web", {"model.safetensors": data})
    with mirror.client() as c:
        assert c.get("/api/mirror").json() == {"models": []}
    events = EventReader(mirror.url)
    try:
        got: list[bytes] = []
        fetch(mirror.url, got)
        fetch(mirror.url, got)  # from the store now
        seen = events.wait_for(
            lambda e: (
                e["event"] == "mirror"
                and any(m["served_bytes"] == 2 * len(data) for m in e["models"])
            ),
            timeout_s=20,
        )
    finally:
        events.close()
    assert got == [data, data]
    with mirror.client() as c:
        view = c.get("/api/mirror").json()["models"]
    assert view == seen["models"]
    (model,) = view
    assert model["name"] == "org/web" and model["repo_type"] == "model"
    assert model["upstream_bytes"] == hub.cdn_bytes(hashlib.sha256(data).hexdigest())
    assert len(data) <= model["upstream_bytes"] <= 1.05 * len(data)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium")
def test_the_page_shows_mirrored_traffic_live(hub: FakeHub, mirror: ServerThread) -> None:
    from playwright.sync_api import expect, sync_playwright

    data = random.Random(32).randbytes(24 * MiB)
    hub.add_repo("org/web", {"model.safetensors": data})
    hub.set_speed_limit(2 * MiB)  # per connection: seconds of traffic to watch
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(mirror.url)
            expect(page.locator("#conn")).to_have_text("live", timeout=20_000)
            expect(page.locator("#mirror-empty")).to_be_visible()
            expect(page.locator("#mirror-endpoint")).to_have_text(f"{mirror.url}/hf")

            got: list[bytes] = []
            client = threading.Thread(target=fetch, args=(mirror.url, got), daemon=True)
            client.start()
            # Live: the row moves while the upstream is still sending.
            page.wait_for_function(
                "([row, n]) => { const r = document.querySelector(row);"
                " return r && Number(r.dataset.upstream) > 0 && Number(r.dataset.upstream) < n; }",
                arg=[ROW, len(data)],
                timeout=30_000,
            )
            expect(page.locator(f"{ROW} .name")).to_have_text("org/web")
            client.join(60)
            assert got == [data]
            hub.set_speed_limit(None)
            fetch(mirror.url, got)  # a second client: served twice, fetched once
            page.wait_for_function(
                "([row, n]) => Number(document.querySelector(row)?.dataset.served) === 2 * n",
                arg=[ROW, len(data)],
                timeout=20_000,
            )
            # The store table shows the mirrored model too.
            expect(page.locator('#store-body tr[data-name="org/web"]')).to_be_visible()
            upstream = int(page.locator(ROW).get_attribute("data-upstream") or 0)
            assert len(data) <= upstream <= 1.05 * len(data)
            expect(page.locator(f"{ROW} .ratio")).to_contain_text("×")
            expect(page.locator("#mirror-total")).to_contain_text("served")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web-mirror.png"), full_page=True)
        finally:
            browser.close()
