"""The web page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright),
against a real service, origin and fake Hub: add a download, watch its bar move, pause it and
see the origin stop, resume, cancel; pull a model, pin it, remove it. Two pages stay open to
show that what each shows comes from the event stream. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakehub import FakeHub
from modelhaul.server.security import AccessPolicy
from origin import Fault, Origin
from server_harness import KiB, MiB, ServerThread, service_config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium"),
]

if CHROMIUM.exists():
    from playwright.sync_api import Browser, Page, expect, sync_playwright

    expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def server(tmp_path: Path, hub: FakeHub) -> Iterator[ServerThread]:
    with ServerThread(service_config(tmp_path, hf_endpoint=hub.endpoint)) as s:
        yield s


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    expect(page.locator("#conn")).to_have_text("live")
    return page


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def bar_bytes(page: Page, download_id: str) -> int:
    return int(page.locator(f"#dl-{download_id} .bar").get_attribute("data-bytes") or 0)


def wait_bar_above(page: Page, download_id: str, n: int) -> int:
    page.wait_for_function(
        "([id, n]) => Number(document.querySelector(`#dl-${id} .bar`)?.dataset.bytes) > n",
        arg=[download_id, n],
    )
    return bar_bytes(page, download_id)


def test_download_pause_resume_cancel(
    browser: Browser, server: ServerThread, origin: Origin
) -> None:
    data = random.Random(1).randbytes(8 * MiB)
    origin.add_file("movie.bin", data)
    origin.set_default("movie.bin", Fault(rate_bytes_per_s=512 * KiB))
    page = open_page(browser, server.url)
    other = open_page(browser, server.url)
    try:
        # A wrong address is refused with the service's message, and nothing is queued.
        page.fill("#add-source", "ftp://example.org/x")
        page.click("#add-submit")
        expect(page.locator("#add-error")).to_contain_text("url")
        expect(page.locator("#queue-empty")).to_be_visible()

        page.fill("#add-source", origin.url("movie.bin"))
        page.fill("#add-out", "movie.bin")
        page.click("#add-submit")
        row = page.locator("#dl-1")
        expect(row.locator(".name")).to_have_text("movie.bin")
        expect(other.locator("#dl-1 .name")).to_have_text("movie.bin")
        expect(page.locator("#add-error")).to_be_empty()

        # The bar moves.
        first = wait_bar_above(page, "1", 0)
        second = wait_bar_above(page, "1", first)
        assert 0 < first < second < len(data)
        expect(row.locator(".speed")).to_contain_text("/s")
        expect(row.locator(".eta")).not_to_be_empty()
        shot(page, "web-1-running.png")

        # Pause: both pages say so, and the origin stops serving.
        row.locator("button.pause").click()
        expect(row.locator(".state")).to_have_text("paused")
        expect(other.locator("#dl-1 .state")).to_have_text("paused")
        expect(row.locator("button.resume")).to_be_visible()
        expect(row.locator("button.pause")).to_be_hidden()
        origin.wait_idle()
        stopped = origin.bytes_served("movie.bin")
        assert stopped < len(data)

        # The speed limit set on one page shows on the other.
        page.fill("#limit-input", "8M")
        page.click("#limit-form button")
        expect(other.locator("#limit-current")).to_have_text("now: 8.0 MiB/s")
        # So does a priority change.
        prio = row.locator(".prio")
        prio.fill("5")
        prio.press("Enter")
        expect(other.locator("#dl-1 .prio")).to_have_value("5")
        shot(page, "web-2-paused.png")
        assert origin.bytes_served("movie.bin") == stopped  # nothing moved while paused
        paused_bytes = bar_bytes(page, "1")

        # Resume: the bar moves on from where it stopped, not from zero.
        other.locator("#dl-1 button.resume").click()
        expect(row.locator(".state")).to_have_text("running")
        origin.wait_bytes("movie.bin", stopped + 64 * KiB)
        assert wait_bar_above(page, "1", paused_bytes) > paused_bytes
        assert origin.ranges_served("movie.bin")[-1][0] > 0

        # Cancel: final on both pages, the partial data is gone, and the row can be cleared.
        row.locator("button.cancel").click()
        expect(row.locator(".state")).to_have_text("cancelled")
        expect(other.locator("#dl-1 .state")).to_have_text("cancelled")
        folder = server.config.download_dir
        assert not any(p.name.startswith("movie.bin") for p in folder.iterdir())
        shot(page, "web-3-cancelled.png")
        other.locator("#dl-1 button.forget").click()
        expect(page.locator("#dl-1")).to_have_count(0)
        expect(page.locator("#queue-empty")).to_be_visible()
    finally:
        page.close()
        other.close()


def test_pull_pin_and_remove_a_model(browser: Browser, server: ServerThread, hub: FakeHub) -> None:
    weights = random.Random(2).randbytes(3 * MiB)
    hub.add_repo("org/tiny", {"config.json": b'{"layers": 2}', "model.safetensors": weights})
    page = open_page(browser, server.url)
    other = open_page(browser, server.url)
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        expect(page.locator("#store-empty")).to_be_visible()
        expect(page.locator("#disk")).to_contain_text("free on disk")
        page.fill("#add-source", "hf://org/tiny")
        page.click("#add-submit")
        expect(page.locator("#dl-1 .state")).to_have_text("completed")
        expect(page.locator("#dl-1 .bar")).to_have_attribute("aria-valuenow", "100.0")

        model = page.locator('#store-body tr[data-name="org/tiny"]')
        expect(model.locator(".state")).to_have_text("ready")
        expect(model.locator(".size")).to_contain_text("MiB")
        expect(other.locator('#store-body tr[data-name="org/tiny"]')).to_have_count(1)

        model.locator("button.pin").click()
        expect(model.locator(".pinned")).to_have_text("yes")
        expect(other.locator('#store-body tr[data-name="org/tiny"] .pinned')).to_have_text("yes")
        shot(page, "web-4-store.png")
        model.locator("button.unpin").click()
        expect(model.locator(".pinned")).to_have_text("")

        model.locator("button.remove").click()
        expect(page.locator('#store-body tr[data-name="org/tiny"]')).to_have_count(0)
        expect(other.locator("#store-empty")).to_be_visible()
        assert not (server.config.store_root / "models--org--tiny").exists()
        shot(page, "web-5-removed.png")
    finally:
        page.close()
        other.close()


def test_token_login(browser: Browser, tmp_path: Path) -> None:
    token = "web-token-" * 4
    policy = AccessPolicy(bind_host="127.0.0.1", token=token)
    with ServerThread(service_config(tmp_path), policy) as server:
        page = browser.new_page()
        try:
            page.goto(server.url)
            expect(page.locator("#login")).to_be_visible()
            expect(page.locator("#app")).to_be_hidden()
            page.fill("#login-token", "wrong")
            page.click("#login-form button")
            expect(page.locator("#login")).to_be_visible()
            page.fill("#login-token", token)
            page.click("#login-form button")
            expect(page.locator("#conn")).to_have_text("live")
            expect(page.locator("#app")).to_be_visible()
            assert "token" not in page.url  # traded for an HttpOnly cookie at once
            cookies = page.context.cookies()
            assert [c["httpOnly"] for c in cookies if c["name"] == "modelhaul_token"] == [True]
        finally:
            page.close()
