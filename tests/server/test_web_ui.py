"""The web page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright),
against a real service, origin and fake Hub: add a download, watch its bar move, pause it and
see the origin stop, resume, cancel; pull a model, pin it, remove it. Two pages stay open to
show that what each shows comes from the event stream. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fakehub import FakeHub
from modelhaul.server.security import AccessPolicy
from origin import Fault, Origin
from server_harness import KiB, MiB, ServerThread, service_config, wait_state

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
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


@pytest.fixture
def split_server(tmp_path: Path, hub: FakeHub) -> Iterator[ServerThread]:
    """A service that splits files larger than its first request (8 MiB) over 2 connections."""
    config = service_config(tmp_path, hf_endpoint=hub.endpoint)
    segments = replace(config.download.segments, connections=2)
    with ServerThread(replace(config, download=replace(config.download, segments=segments))) as s:
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


def test_removing_a_pinned_model_asks_naming_the_pin(
    browser: Browser, server: ServerThread, hub: FakeHub
) -> None:
    hub.add_repo("org/kept", {"config.json": b'{"layers": 1}', "w.bin": b"w" * (256 * KiB)})
    with server.client() as api:
        job = api.post("/api/pulls", json={"source": "hf://org/kept"}).json()
        assert wait_state(api, job["id"], ("completed", "failed"))["state"] == "completed"
        assert api.post("/api/models/pin", json={"name": "org/kept"}).status_code == 200
    page = open_page(browser, server.url)
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        if len(asked) == 1:
            dialog.dismiss()  # the first time, no: the model stays
        else:
            dialog.accept()

    page.on("dialog", answer)
    try:
        model = page.locator('#store-body tr[data-name="org/kept"]')
        expect(model.locator(".pinned")).to_have_text("yes")

        model.locator("button.remove").click()
        expect(model).to_have_count(1)
        assert asked[0].startswith("org/kept is pinned; remove anyway?"), asked

        model.locator("button.remove").click()
        expect(model).to_have_count(0)
        expect(page.locator("#store-empty")).to_be_visible()
        expect(page.locator("#store-error")).to_be_empty()
        assert len(asked) == 2 and asked[1] == asked[0]
        assert not (server.config.store_root / "models--org--kept").exists()
    finally:
        page.close()


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


# Every look a bar or a state badge can take; the contrast test draws each one.
BAR_LOOKS = (
    "queued",
    "running",
    "paused",
    "verifying",
    "completed",
    "failed",
    "cancelled",
    "present",
)

# WCAG contrast of each text against what is under it, from the browser's computed styles: the
# bar's label on the empty track and on the fill (each part of the label sits on one of them),
# and each state badge. A background that is not opaque counts as unreadable.
CONTRAST_JS = """(looks) => {
  const rgba = (s) => { const v = s.match(/[0-9.]+/g).map(Number); return v.length === 3 ? [...v, 1] : v; };
  const lum = (c) => {
    const f = (x) => ((x /= 255) <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4);
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const ratio = (text, under) => {
    const t = rgba(getComputedStyle(text).color), b = rgba(getComputedStyle(under).backgroundColor);
    if (b[3] < 1) return 0;
    const [hi, lo] = [lum(t), lum(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  };
  const measureBar = (bar) => {
    const onTrack = bar.querySelector(':scope > .label');
    const fill = bar.querySelector('.fill');
    return { track: ratio(onTrack, bar), fill: ratio(fill.querySelector('.label') || onTrack, fill) };
  };
  const out = {};
  const sampleBar = document.querySelector('.bar'), sampleState = document.querySelector('#queue .state');
  for (const look of looks) {
    const bar = sampleBar.cloneNode(true), badge = sampleState.cloneNode(true);
    bar.className = 'bar ' + look;
    badge.className = 'state ' + look;
    sampleBar.parentNode.append(bar, badge);
    out[look] = measureBar(bar);
    if (look !== 'present') out[look].badge = ratio(badge, badge);  // not a state of its own
    bar.remove();
    badge.remove();
  }
  document.querySelectorAll('.bar').forEach((bar, i) => { out['row' + i] = measureBar(bar); });
  return out;
}"""


def add(api: Any, url: str, out: str, **kw: Any) -> str:
    resp = api.post("/api/downloads", json={"url": url, "out": out, **kw})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def test_rows_say_what_happened_and_stay_readable(
    browser: Browser, split_server: ServerThread, origin: Origin, hub: FakeHub
) -> None:
    server = split_server
    folder = server.config.download_dir.resolve()
    small = random.Random(3).randbytes(64 * KiB)
    origin.add_file("run.bin", random.Random(4).randbytes(12 * MiB))
    origin.set_default("run.bin", Fault(rate_bytes_per_s=256 * KiB))
    origin.add_file("busy.bin", small)
    origin.set_default("busy.bin", Fault(status=503))
    origin.add_file("done.bin", small)
    hub.add_repo("org/tiny", {"config.json": b'{"layers": 2}', "w.bin": small})
    page = open_page(browser, server.url)
    with server.client() as api:
        ids = {
            "run": add(api, origin.url("run.bin"), "run.bin"),
            "gone": add(api, origin.url("gone.bin"), "gone.bin"),
            "busy": add(api, origin.url("busy.bin"), "busy.bin"),
            "done": add(api, origin.url("done.bin"), "done.bin"),
            "later": add(api, origin.url("done.bin"), "later.bin", paused=True),
            "stop": add(api, origin.url("done.bin"), "stop.bin", paused=True),
        }
        api.post(f"/api/downloads/{ids['stop']}/cancel").raise_for_status()
        for key, state in [("gone", "failed"), ("busy", "failed"), ("done", "completed")]:
            wait_state(api, ids[key], (state,))
        first = api.post("/api/pulls", json={"source": "hf://org/tiny"}).json()["id"]
        wait_state(api, first, ("completed",))
        again = api.post("/api/pulls", json={"source": "hf://org/tiny"}).json()["id"]
        wait_state(api, again, ("completed",))
    row = {k: page.locator(f"#dl-{v}") for k, v in ids.items()}
    try:
        # Why it failed is on the row itself, not in a tooltip: category and message.
        gone_why = row["gone"].locator(".why")
        expect(gone_why).to_be_visible()
        expect(gone_why.locator(".category")).to_have_attribute("data-category", "not_found")
        expect(gone_why.locator(".message")).to_contain_text("404")
        expect(row["busy"].locator(".why .category")).to_have_text("server error")
        expect(row["done"].locator(".why")).to_be_hidden()
        # A permanent failure offers a retry after a fix; a transient one, to resume.
        expect(row["gone"].locator("button.retry")).to_be_visible()
        expect(row["gone"].locator("button.resume")).to_be_hidden()
        expect(row["busy"].locator("button.resume")).to_be_visible()
        expect(row["busy"].locator("button.retry")).to_be_hidden()
        # Finished rows keep their priority read-only; live ones can change it.
        for key in ("gone", "done", "stop"):
            expect(row[key].locator(".prio")).to_be_disabled()
        for key in ("run", "later"):
            expect(row[key].locator(".prio")).to_be_enabled()
        # Each row shows where from and where to.
        for key in ("run", "gone", "done"):
            expect(row[key].locator(".source")).to_have_text(origin.url(f"{key}.bin"))
            expect(row[key].locator(".dest")).to_have_text(str(folder / f"{key}.bin"))
        pulled, present = page.locator(f"#dl-{first}"), page.locator(f"#dl-{again}")
        expect(present.locator(".source")).to_have_text("hf://org/tiny")
        expect(present.locator(".dest")).to_contain_text("models--org--tiny")
        # A pull that found everything in the store says so, instead of a green "0 B".
        expect(present.locator(".bar > .label")).to_have_text("already in the store")
        expect(pulled.locator(".bar > .label")).not_to_have_text("already in the store")
        wait_bar_above(page, ids["run"], 0)
        shot(page, "web-6-every-state.png")

        contrast = page.evaluate(CONTRAST_JS, list(BAR_LOOKS))
        low = {
            (look, where): round(value, 2)
            for look, values in contrast.items()
            for where, value in values.items()
            if value < 4.5
        }
        assert not low, f"text below 4.5:1 contrast: {low}"
        assert {f"row{i}" for i in range(8)} <= contrast.keys()

        # The fix made, Retry fetches it to the same place.
        origin.add_file("gone.bin", small)
        row["gone"].locator("button.retry").click()
        expect(row["gone"].locator(".state")).to_have_text("completed")
        expect(row["gone"].locator(".why")).to_be_hidden()
        assert (folder / "gone.bin").read_bytes() == small
    finally:
        page.close()


def test_throughput_chart_and_connections(
    browser: Browser, split_server: ServerThread, origin: Origin
) -> None:
    rate = 512 * KiB
    origin.add_file("big.bin", random.Random(5).randbytes(12 * MiB))
    origin.set_default("big.bin", Fault(rate_bytes_per_s=rate))
    page = open_page(browser, split_server.url)
    try:
        page.fill("#add-source", origin.url("big.bin"))
        page.click("#add-submit")
        row = page.locator("#dl-1")
        # Two connections, as the service was told; the origin served both.
        expect(row.locator(".conns")).to_have_text("2")
        # The chart samples once a second; wait for a few samples with bytes moving.
        page.wait_for_function(
            "() => { const c = document.querySelector('#chart');"
            " return Number(c.dataset.samples) >= 3 && Number(c.dataset.peak) > 0; }"
        )
        peak = float(page.locator("#chart").get_attribute("data-peak") or 0)
        assert 0 < peak < 4 * 2 * rate  # two throttled connections, with room for noise
        points = page.locator("#chart .line").get_attribute("points") or ""
        heights = [float(p.split(",")[1]) for p in points.split()]
        assert min(heights) < 72 - 10  # a visible rise above the baseline
        expect(page.locator("#rate-now")).to_contain_text("/s now")
        shot(page, "web-7-throughput.png")

        # Paused, nothing moves: no connection shown, the chart and the header fall to zero.
        row.locator("button.pause").click()
        expect(row.locator(".state")).to_have_text("paused")
        expect(row.locator(".conns")).to_have_text("")
        expect(page.locator("#rate-now")).to_have_text("· idle")
        expect(page.locator("#total")).to_have_text("")
        shot(page, "web-8-paused-chart.png")
    finally:
        page.close()
