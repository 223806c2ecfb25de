"""Hostile input and lying origins: every case ends right, or in a clear error, never worse.

The parsers are fuzzed one by one in tests/test_policy_*.py; here hostile values go through
the whole path they travel in real use: a header from a real origin through the engine to a
file on disk, a manifest through its parser, a Hub listing from a real (hostile) server through
huggingface_hub and the Hub source, a rate string through the CLI's own argument parser.

What every case must end in: the right bytes, or a ModelhaulError with a category (through
the CLI: a JSON result line and no traceback), no file at the output path after a failure, and
no write outside the target directory or the store. Origins that lie about lengths, ranges and
encodings must not cost unbounded memory or disk either.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import modelhaul_cmd
from helpers import sha, to_toml
from modelhaul.cli.main import build_parser
from modelhaul.cli.options import download_config
from modelhaul.config import DownloadConfig, RetryPolicy, SegmentPolicy, Timeouts
from modelhaul.engine.downloader import Downloader
from modelhaul.errors import CATEGORIES, InvalidInput, ModelhaulError
from modelhaul.policy.backoff import parse_retry_after
from modelhaul.sources import hf
from modelhaul.sources.hf import HubSource, parse_hf_uri
from modelhaul.sources.manifest import MAX_FILE_SIZE, parse_manifest_text
from origin import Fault, Origin

KiB, MiB = 1024, 1024 * 1024
# Bigger than the engine's 8 MiB probe, so segment requests follow it.
SEGMENTED = 8 * MiB + 192 * KiB

e2e = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
fuzz = settings(max_examples=200, deadline=None)


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def fast_config(**kw: Any) -> DownloadConfig:
    """Two connections, small chunks, quick retries: many requests in little time."""
    return DownloadConfig(
        retry=RetryPolicy(retries=2, initial_delay_s=0.01, max_delay_s=0.05, max_restarts=2),
        timeouts=Timeouts(stall_s=5, connect_s=5),
        segments=SegmentPolicy(connections=2, chunk_bytes=64 * KiB, min_steal_bytes=64 * KiB),
        **kw,
    )


class Example:
    """A fresh name and directory for each hypothesis example (the origin is shared)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def next(self) -> tuple[str, Path]:
        self.count += 1
        where = self.root / f"ex{self.count}"
        (where / "dir").mkdir(parents=True)
        return f"f{self.count}.bin", where


@pytest.fixture
def examples(tmp_path: Path) -> Example:
    return Example(tmp_path / "examples")


def download(
    url: str, *, dest: Path | None = None, directory: Path | None = None, state: Path, **kw: Any
) -> Any:
    async def go() -> Any:
        async with Downloader(fast_config(), state_dir=state) as dl:
            return await dl.download(url, dest, directory=directory, **kw)

    return asyncio.run(go())


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if not p.is_dir())


def ends_right_or_cleanly(run: Callable[[], Any], out: Path, data: bytes) -> str:
    """Run a download; it must leave ``data`` at ``out`` or fail with a categorised error and
    nothing at ``out``. Returns "ok" or the error's category."""
    try:
        run()
    except ModelhaulError as exc:
        assert exc.category in CATEGORIES
        assert not out.exists(), f"a failed download left {out}"
        return exc.category
    assert out.read_bytes() == data, "a WRONG FILE at the output path"
    return "ok"


# ---------------------------------------------------------------------------------- headers

_name_parts = st.sampled_from(
    ["..", ".", "/", "\\", "%2e%2e%2f", "%2F", "%00", "%0a", "C:", "~", " ", "évil", "名前", "🦀"]
)
hostile_names = st.one_of(
    st.lists(st.one_of(_name_parts, st.text(min_size=1, max_size=8)), max_size=8).map("".join),
    st.text(min_size=200, max_size=400),
    st.just("../" * 50 + "etc/passwd"),
)


def _disposition(name: str, extended: bool) -> str:
    if extended:  # RFC 5987: any byte can come through, percent-encoded
        from urllib.parse import quote

        return f"attachment; filename*=UTF-8''{quote(name, safe='')}"
    # A quoted plain name must stay a valid header value: printable latin-1, no quote/backslash.
    plain = "".join(c for c in name if c.isprintable() and c not in '"\\' and ord(c) < 256)
    return f'attachment; filename="{plain}"'


@e2e
@given(name=hostile_names, extended=st.booleans())
@example(name="../../outside.bin", extended=False)
@example(name="/etc/passwd", extended=True)
@example(name="a/../../../outside.bin", extended=True)
@example(name="..", extended=True)
def test_content_disposition_names_land_inside_the_directory(
    origin: Origin, examples: Example, name: str, extended: bool
) -> None:
    fname, where = examples.next()
    data = blob(1000, seed=examples.count)
    origin.add_file(fname, data, content_disposition=_disposition(name, extended))

    result = download(origin.url(fname), directory=where / "dir", state=where / "state")

    path = Path(result.path)
    assert path.parent == where / "dir", f"{name!r} put the file at {path}"
    assert path.read_bytes() == data
    assert not path.name.startswith(".") and len(path.name.encode()) <= 200
    assert [p for p in files_under(where) if "state" not in p.parts] == [path]


content_ranges = st.one_of(
    st.builds(
        "bytes {}-{}/{}".format,
        st.integers(-2, SEGMENTED + 2),
        st.integers(-2, SEGMENTED + 2),
        st.one_of(st.integers(-1, SEGMENTED + 2), st.just("*")),
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.sampled_from(["bytes 0-0/0", "bytes 0-9" + "9" * 30 + "/1", "bytes */1", ""]),
)


@e2e
@given(value=content_ranges, on_segment=st.booleans())
@example(value=f"bytes 0-{8 * MiB - 1}/{SEGMENTED + 1}", on_segment=False)  # a bigger total
@example(value=f"bytes 1024-{8 * MiB + 1023}/{SEGMENTED}", on_segment=False)  # shifted
@example(value=f"bytes {8 * MiB}-{8 * MiB + 65535}/{SEGMENTED - 1}", on_segment=True)
def test_any_content_range_ends_right_or_cleanly(
    origin: Origin, examples: Example, value: str, on_segment: bool
) -> None:
    fname, where = examples.next()
    data = blob(SEGMENTED, seed=examples.count)
    origin.add_file(fname, data)
    origin.plan(fname, [Fault(), Fault(headers={"Content-Range": value})][not on_segment :])
    out = where / "dir" / "out.bin"

    ends_right_or_cleanly(
        lambda: download(origin.url(fname), dest=out, state=where / "state", sha256=sha(data)),
        out,
        data,
    )


@e2e
@given(
    etag=st.one_of(
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=60),
        st.builds(lambda s: f'W/"{s}"', st.text("abc\"'", max_size=5)),
        st.just('"' + "x" * 5000 + '"'),
    ),
    with_sha=st.booleans(),
)
def test_any_etag_on_a_resumed_download_ends_right_or_cleanly(
    origin: Origin, examples: Example, etag: str, with_sha: bool
) -> None:
    fname, where = examples.next()
    data = blob(SEGMENTED, seed=examples.count)
    origin.add_file(fname, data)
    origin.set_default(fname, Fault(headers={"ETag": etag}))
    # The first response breaks off: the rest is asked for with If-Range carrying the ETag.
    origin.plan(fname, [Fault(headers={"ETag": etag}, drop_after=3 * MiB)])
    out = where / "dir" / "out.bin"

    ends_right_or_cleanly(
        lambda: download(
            origin.url(fname),
            dest=out,
            state=where / "state",
            sha256=sha(data) if with_sha else None,
        ),
        out,
        data,
    )


@e2e
@given(value=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
@example(value="-1")
@example(value="1e9")
@example(value="Fri, 31 Dec 1999 23:59:59 GMT")
@example(value="0x10")
@example(value="999999999999999999999999999999")
def test_hostile_retry_after_values_are_honoured_or_ignored(
    origin: Origin, examples: Example, value: str
) -> None:
    wait_s = parse_retry_after(value)
    if wait_s is not None and wait_s > 1:
        return  # a real wait, honoured as asked (tests/test_policy_backoff.py); too slow here
    fname, where = examples.next()
    data = blob(10 * KiB, seed=examples.count)
    origin.add_file(fname, data)
    origin.plan(fname, [Fault(status=503, headers={"Retry-After": value})])
    out = where / "dir" / "out.bin"

    assert (
        ends_right_or_cleanly(
            lambda: download(origin.url(fname), dest=out, state=where / "state"), out, data
        )
        == "ok"
    )


rate_texts = st.one_of(
    st.text(max_size=12),
    st.builds(
        "{}{}{}".format,
        st.sampled_from(["", "-", "+", "0", "0.", "1e", "nan", "inf", "9" * 30, "1_0"]),
        st.sampled_from(["", "0", "5", ".5", "1.5", "00"]),
        st.sampled_from(["", "K", "m", "G", "T", "P", "KiB", "MB/s", "/s", " ", "b", "kk"]),
    ),
)


@fuzz
@given(rate_texts)
@example("0.5")
@example("1e3")
@example("-5M")
@example("99999999999999999999T")
def test_rate_strings_from_the_command_line_are_a_rate_or_invalid_input(text: str) -> None:
    parser = build_parser()
    try:
        args = parser.parse_args(["get", "http://127.0.0.1:9/x", f"--limit-rate={text}"])
    except SystemExit as exc:  # argparse refuses it as usage: exit status 2
        assert exc.code == 2
        return
    try:
        config = download_config(args)
    except InvalidInput:
        return
    rate = config.rate.rate_bytes_per_s
    assert rate is None or (isinstance(rate, int) and 1 <= rate <= 2**62)


# ---------------------------------------------------------------------------------- manifests

HEX64 = "ab" * 32
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["../x", "/etc/passwd", "a/../../b", "a\\b", "C:x", "ok.bin", "http://h/x"]),
    st.lists(st.text(max_size=5), max_size=3),
)
_good_entry = st.fixed_dictionaries(
    {
        "path": st.sampled_from(["a.bin", "dir/b.bin", "a.bin/c", "../e.bin", "a.bin", "é/名"]),
        "size": st.one_of(st.integers(0, 10), st.just(MAX_FILE_SIZE + 1), st.just(-1)),
        "sha256": st.sampled_from([HEX64, HEX64.upper(), "ab" * 31, "zz" * 32]),
        "url": st.sampled_from(["http://127.0.0.1:9/a", "ftp://h/a", "file:///etc/passwd"]),
    }
)
_entries = st.one_of(
    _good_entry,
    st.dictionaries(st.sampled_from(["path", "size", "sha256", "url", "mirrors"]), _values),
    _values,
)
manifests = st.one_of(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["org/model", "../x", "a--b/c", "org/ok"]),
            "files": st.lists(_entries, max_size=4),
        },
        optional={"revision": st.one_of(_values, st.just("v1"))},
    ),
    st.dictionaries(st.text(max_size=6), _values, max_size=3),
)


def _render(data: Any, fmt: str) -> str | None:
    if fmt == "json":
        return json.dumps(data)
    if fmt == "yaml":
        return yaml.safe_dump(data)
    try:
        return to_toml(data) if isinstance(data, dict) else None
    except (ValueError, TypeError):  # TOML has no null; the generator made one
        return None


def check_spec_or_invalid(text: str, fmt: str) -> None:
    try:
        spec = parse_manifest_text(text, fmt=fmt, source=f"m.{fmt}")
    except InvalidInput as exc:
        assert exc.category == "invalid_input" and exc.message
        return
    paths = [f.path for f in spec.files]
    assert len(paths) == len(set(paths))
    for f in spec.files:
        assert not f.path.startswith("/") and ".." not in f.path.split("/")
        assert "\\" not in f.path and "\x00" not in f.path
        assert 0 <= f.size <= MAX_FILE_SIZE
        assert len(f.blob_id) == 64 and f.sha256 == f.blob_id
        assert all(u.startswith(("http://", "https://")) for u in f.urls)


@fuzz
@given(data=manifests, fmt=st.sampled_from(["toml", "json", "yaml"]))
def test_structured_manifest_fuzz_gives_a_safe_spec_or_invalid_input(data: Any, fmt: str) -> None:
    text = _render(data, fmt)
    if text is not None:
        check_spec_or_invalid(text, fmt)


@fuzz
@given(text=st.text(max_size=200), fmt=st.sampled_from(["toml", "json", "yaml"]))
@example(text="[" * 100_000, fmt="json")
@example(text="a = " + "[" * 100_000, fmt="toml")
@example(text="a: " + "[" * 100_000, fmt="yaml")
@example(text="!!python/object/apply:os.system ['true']", fmt="yaml")
@example(text='{"name": "org/m", "name": "../x", "files": []}', fmt="json")
def test_raw_manifest_text_fuzz_gives_a_safe_spec_or_invalid_input(text: str, fmt: str) -> None:
    check_spec_or_invalid(text, fmt)


def test_a_yaml_alias_bomb_is_refused_without_expanding_it() -> None:
    lines = ['a0: &a0 ["xxxxxxxx"]']
    for i in range(1, 30):  # 2**29 strings if anything expanded it
        lines.append(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]")
    lines += ["name: org/model", "files:", "  - path: x.bin", "    size: 1", f"    sha256: {HEX64}"]
    lines += ["    url: http://127.0.0.1:9/x", "    mirrors: *a29"]

    with pytest.raises(InvalidInput, match="mirrors"):
        parse_manifest_text("\n".join(lines), fmt="yaml")


def test_duplicate_paths_in_a_manifest_are_refused_in_every_format() -> None:
    entry = {"path": "a.bin", "size": 1, "sha256": HEX64, "url": "http://127.0.0.1:9/a"}
    data = {"name": "org/model", "files": [entry, dict(entry, url="http://127.0.0.1:9/b")]}
    for fmt in ("toml", "json", "yaml"):
        text = _render(data, fmt)
        assert text is not None
        with pytest.raises(InvalidInput, match="twice"):
            parse_manifest_text(text, fmt=fmt)


# ---------------------------------------------------------------------------------- the Hub


@contextlib.contextmanager
def serve(app: web.Application, *, ssl_context: Any = None) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 from a thread with its own loop; yields the base URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        state["runner"] = runner
        state["port"] = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10), "server did not start"
    scheme = "https" if ssl_context is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{state['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


COMMIT = "c" * 40


@dataclass
class HostileHub:
    """A Hub whose answers the test writes: info and tree bodies, headers, file bytes."""

    info: bytes = json.dumps({"id": "org/model", "sha": COMMIT, "siblings": []}).encode()
    tree: bytes = b"[]"
    tree_headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    tree_requests: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.strip("/").split("/")
        json_type = {"Content-Type": "application/json"}
        if parts[:2] == ["api", "agent-harnesses"]:
            return web.json_response({"standardEnvVars": [], "harnesses": {}})
        if parts[:4] == ["api", "models", "org", "model"]:
            if len(parts) > 4 and parts[4] == "tree":
                self.tree_requests += 1
                headers = {**json_type, **self.tree_headers}
                return web.Response(body=self.tree, headers=headers)
            return web.Response(body=self.info, headers=json_type)
        if parts[:3] == ["org", "model", "resolve"]:
            path = "/".join(parts[4:])
            if path in self.files:
                return web.Response(body=self.files[path])
        return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})


@pytest.fixture
def hostile_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileHub]:
    hub = HostileHub()
    app = web.Application()

    async def route(request: web.Request) -> web.StreamResponse:
        return await hub.handle(request)  # looked up per request: a test may replace it

    app.router.add_route("*", "/{tail:.*}", route)
    with serve(app) as url:
        hub.url = url
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield hub


def resolve(hub: HostileHub) -> Any:
    source = HubSource(endpoint=hub.url, retry=RetryPolicy(retries=0))

    async def go() -> Any:
        async with asyncio.timeout(30):
            return await source.resolve(parse_hf_uri("hf://org/model"))

    return asyncio.run(go())


def entry(path: Any, size: Any = 4, **extra: Any) -> dict[str, Any]:
    return {"type": "file", "oid": "d" * 40, "size": size, "path": path, **extra}


BAD_INFO = [
    b"{not json",
    b"",
    b"[]",
    b'{"id": "org/model"}',
    b'{"id": "org/model", "sha": 5}',
    b'{"id": "org/model", "sha": "../../../etc"}',
    b'{"id": "org/model", "sha": "' + b"g" * 40 + b'"}',
    b"<html>maintenance</html>",
]
BAD_TREES = [
    b"{not json",
    b'{"entries": []}',
    b'"a string"',
    json.dumps([entry("../evil.bin")]).encode(),
    json.dumps([entry("/abs/evil.bin")]).encode(),
    json.dumps([entry("a/../../evil.bin")]).encode(),
    json.dumps([entry("a\\..\\evil.bin")]).encode(),
    json.dumps([entry("evil\x00.bin")]).encode(),
    json.dumps([entry("x" * 300)]).encode(),
    json.dumps([entry(5)]).encode(),
    json.dumps([entry("a.bin", size="4")]).encode(),
    json.dumps([entry("a.bin", size=-1)]).encode(),
    json.dumps([entry("a.bin", size=4.5)]).encode(),
    json.dumps([entry("a.bin", size=None)]).encode(),
    json.dumps([entry("a.bin", oid="../../x")]).encode(),
    json.dumps([entry("a.bin", oid=None)]).encode(),
    json.dumps([entry("a.bin", lfs={"oid": "sha256:../../x", "size": 4})]).encode(),
    json.dumps([entry("a.bin", lfs={"oid": "z" * 64, "size": 4})]).encode(),
    json.dumps([entry("a.bin", lfs={"oid": "a" * 64, "size": 5})]).encode(),
    json.dumps([entry("a.bin", lfs="yes")]).encode(),
    json.dumps([entry("a.bin"), entry("a.bin")]).encode(),
    json.dumps([entry("a.bin"), entry("a.bin/b.bin")]).encode(),
    json.dumps([{"type": "file"}]).encode(),
    json.dumps([None, 5, "x"]).encode(),
]


@pytest.mark.parametrize("body", BAD_INFO, ids=range(len(BAD_INFO)))
def test_a_malformed_repo_info_is_a_clear_error(hostile_hub: HostileHub, body: bytes) -> None:
    hostile_hub.info = body
    with pytest.raises(ModelhaulError) as info:
        resolve(hostile_hub)
    assert info.value.category == "invalid_input"
    assert "Traceback" not in info.value.message and info.value.hint


@pytest.mark.parametrize("body", BAD_TREES, ids=range(len(BAD_TREES)))
def test_a_malformed_or_hostile_tree_is_a_clear_error(hostile_hub: HostileHub, body: bytes) -> None:
    hostile_hub.tree = body
    with pytest.raises(ModelhaulError) as info:
        resolve(hostile_hub)
    assert info.value.category == "invalid_input"


def test_a_tree_whose_next_page_is_itself_ends(hostile_hub: HostileHub) -> None:
    hostile_hub.tree = json.dumps([entry("a.bin")]).encode()
    next_page = f"{hostile_hub.url}/api/models/org/model/tree/{COMMIT}?cursor=x"
    hostile_hub.tree_headers = {"Link": f'<{next_page}>; rel="next"'}

    with pytest.raises(ModelhaulError) as info:
        resolve(hostile_hub)

    assert info.value.category == "invalid_input"
    assert hostile_hub.tree_requests <= 3


def test_an_endless_tree_of_new_names_ends(
    hostile_hub: HostileHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf, "MAX_TREE_ENTRIES", 5000)  # the real bound takes a while to reach

    class Pages:
        """Every page lists new names and links to one more page."""

        def __init__(self) -> None:
            self.n = 0

    pages = Pages()
    base = hostile_hub.url

    async def tree(request: web.Request) -> web.Response:
        pages.n += 1
        body = [entry(f"p{pages.n}/f{i}.bin") for i in range(1000)]
        link = f'<{base}/api/models/org/model/tree/{COMMIT}?cursor={pages.n}>; rel="next"'
        return web.json_response(body, headers={"Link": link})

    original = hostile_hub.handle

    async def handle(request: web.Request) -> web.StreamResponse:
        if "/tree/" in request.path:
            return await tree(request)
        return await original(request)

    hostile_hub.handle = handle  # type: ignore[method-assign]

    with pytest.raises(ModelhaulError) as info:
        resolve(hostile_hub)

    assert info.value.category == "invalid_input"
    assert "more than 5000" in info.value.message
    assert pages.n <= 6


_tree_values = st.one_of(
    st.none(),
    st.integers(-5, 2**64),
    st.text(max_size=12),
    st.sampled_from(["../x", "a/../../b", "/abs", "a\\b", "ok.bin", "d/ok.bin", "a" * 40]),
    st.dictionaries(st.sampled_from(["oid", "size", "sha256"]), st.text(max_size=64), max_size=3),
)
tree_entries = st.lists(
    st.one_of(
        st.builds(entry, st.sampled_from(["ok.bin", "d/ok.bin", "d", "../x", "é.bin"])),
        st.dictionaries(
            st.sampled_from(["type", "oid", "size", "path", "lfs"]), _tree_values, max_size=5
        ).map(lambda d: {"type": "file", **d}),
    ),
    max_size=5,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=tree_entries)
def test_tree_fuzz_gives_a_safe_spec_or_a_clear_error(
    hostile_hub: HostileHub, entries: list[Any]
) -> None:
    hostile_hub.tree = json.dumps(entries).encode()
    try:
        spec = resolve(hostile_hub)
    except ModelhaulError as exc:
        assert exc.category == "invalid_input", exc
        return
    paths = [f.path for f in spec.files]
    assert len(paths) == len(set(paths))
    for f in spec.files:
        assert not f.path.startswith("/") and ".." not in f.path.split("/") and "\\" not in f.path
        assert isinstance(f.size, int) and f.size >= 0
        assert len(f.blob_id) in (40, 64) and all(c in "0123456789abcdef" for c in f.blob_id)


def _hf_env(tmp_path: Path, hub: HostileHub) -> dict[str, str]:
    hf_home = Path(os.environ["HF_HOME"])
    hf_home.mkdir(parents=True, exist_ok=True)
    (hf_home / ".agent_harnesses.json").write_text('{"standardEnvVars": [], "harnesses": {}}')
    return dict(os.environ) | {"HF_ENDPOINT": hub.url}


@pytest.mark.parametrize("body", [BAD_TREES[3], BAD_TREES[4], BAD_TREES[20], b"{not json"])
def test_the_cli_refuses_a_hostile_listing_and_writes_nothing(
    hostile_hub: HostileHub, tmp_path: Path, body: bytes
) -> None:
    hostile_hub.tree = body
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = set(files_under(tmp_path))

    done = subprocess.run(
        modelhaul_cmd("pull", "hf://org/model", "--json", "--local-dir", "out"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=_hf_env(tmp_path, hostile_hub),
    )

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["error"]["category"] == "invalid_input"
    written = set(files_under(tmp_path)) - before
    assert not [p for p in written if "evil" in p.name or "out" in p.parts], written
    assert not list(Path(os.environ["HF_HUB_CACHE"]).rglob("blobs/*"))


@pytest.mark.parametrize("lfs", [False, True])
def test_a_file_of_another_size_than_listed_is_never_published(
    hostile_hub: HostileHub, tmp_path: Path, lfs: bool
) -> None:
    data = blob(5000, seed=3)
    listed = {"oid": hashlib.sha1(b"blob 4000\0" + data[:4000]).hexdigest()}
    if lfs:
        listed["lfs"] = {"oid": sha(data), "size": 4000, "pointerSize": 130}
    hostile_hub.tree = json.dumps([entry("w.bin", size=4000) | listed]).encode()
    hostile_hub.files = {"w.bin": data}

    done = subprocess.run(
        modelhaul_cmd("pull", "hf://org/model", "--json", "--retries", "0"),
        capture_output=True,
        text=True,
        timeout=60,
        env=_hf_env(tmp_path, hostile_hub),
    )

    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["error"]["category"] == "integrity"
    cache = Path(os.environ["HF_HUB_CACHE"])
    assert not [p for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts]
    assert not [p for p in cache.rglob("snapshots/*/*")]


# ---------------------------------------------------------------------------------- lying origins


@dataclass
class Measured:
    code: int
    stdout: str
    stderr: str
    max_rss_mib: float

    @property
    def result(self) -> dict[str, Any]:
        lines = [json.loads(x) for x in self.stdout.splitlines() if x.startswith("{")]
        assert lines, f"no JSON line (exit {self.code}): {self.stderr}"
        return lines[-1]


# Runs the CLI and writes the process's peak RSS (VmHWM, KiB) to argv[1] on the way out.
# Measured inside the process: a parent's rusage of a forked child also counts the pages the
# child shared with the parent (here: the whole test process) before it exec'd.
PEAK_RSS_WRAPPER = """
import atexit, runpy, sys
out = sys.argv[1]
def report():
    with open("/proc/self/status") as f:
        peak = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        f.write(peak)
atexit.register(report)
sys.argv = ["modelhaul", *sys.argv[2:]]
runpy.run_module("modelhaul.cli.main", run_name="__main__")
"""


def run_measured(*args: str, cwd: Path, timeout_s: float = 60) -> Measured:
    """Run the CLI (as ``python -m modelhaul.cli.main``) and report its peak RSS."""
    peak = cwd / "peak-rss"
    peak.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_WRAPPER, str(peak), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
    )
    rss_mib = int(peak.read_text()) / 1024 if peak.exists() else float("nan")
    return Measured(done.returncode, done.stdout, done.stderr, rss_mib)


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    path = tmp_path / "cwd"
    path.mkdir()
    return path


def assert_failed_cleanly(run: Measured, out: Path, category: str | None = None) -> None:
    assert run.code in (1, 2), run.stderr
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    assert run.result["error"]["category"] in CATEGORIES
    if category is not None:
        assert run.result["error"]["category"] == category, run.result
    assert not out.exists()


def get(origin: Origin, name: str, out: Path, data: bytes, *extra: str) -> list[str]:
    return [
        "get",
        origin.url(name),
        "-o",
        str(out),
        "--sha256",
        sha(data),
        "--json",
        "--retries",
        "1",
        "--timeout",
        "5",
        *extra,
    ]


def test_content_length_larger_than_the_body_keeps_what_came_and_resumes(
    origin: Origin, cwd: Path
) -> None:
    data = blob(3 * MiB, seed=20)
    origin.add_file("short.bin", data)
    # Every response promises the whole range; the first delivers 1 MiB, later ones nothing.
    origin.plan("short.bin", [Fault(truncate_after=MiB)])
    origin.set_default("short.bin", Fault(truncate_after=0))
    out = cwd / "short.bin"

    first = run_measured(*get(origin, "short.bin", out, data, "--retries", "0"), cwd=cwd)
    assert_failed_cleanly(first, out, "network")
    origin.set_default("short.bin", None)
    origin.reset_stats()
    second = run_measured(*get(origin, "short.bin", out, data), cwd=cwd)

    assert second.code == 0, second.stderr
    assert out.read_bytes() == data
    assert origin.bytes_served("short.bin") == len(data) - MiB


@pytest.mark.parametrize("ranged", [False, True])
def test_a_body_longer_than_its_content_length_is_cut_at_the_length(
    origin: Origin, cwd: Path, ranged: bool
) -> None:
    data = blob(SEGMENTED if ranged else MiB, seed=21)
    origin.add_file("long.bin", data, accept_ranges=ranged)
    origin.set_default("long.bin", Fault(extra_body=4 * MiB))
    out = cwd / "long.bin"

    run = run_measured(*get(origin, "long.bin", out, data, "-x", "2"), cwd=cwd)

    assert run.code == 0, run.stderr
    assert out.read_bytes() == data


def test_an_origin_that_always_garbles_content_range_never_gives_a_wrong_file(
    origin: Origin, cwd: Path
) -> None:
    data = blob(SEGMENTED, seed=22)
    origin.add_file("cr.bin", data)
    origin.set_default("cr.bin", Fault(wrong_content_range=True))
    out = cwd / "cr.bin"

    run = run_measured(*get(origin, "cr.bin", out, data, "-x", "4"), cwd=cwd)

    if run.code == 0:
        assert out.read_bytes() == data
    else:
        assert_failed_cleanly(run, out)


def test_bytes_changed_under_the_same_validators_are_caught_by_the_checksum(
    origin: Origin, cwd: Path
) -> None:
    old, new = blob(3 * MiB, seed=23), blob(3 * MiB, seed=24)
    validators = {"etag": '"same"', "last_modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
    origin.add_file("liar.bin", old, **validators)
    origin.plan("liar.bin", [Fault(truncate_after=MiB)])
    origin.set_default("liar.bin", Fault(truncate_after=0))
    out = cwd / "liar.bin"
    first = run_measured(*get(origin, "liar.bin", out, old, "--retries", "0"), cwd=cwd)
    assert_failed_cleanly(first, out)
    # The origin now serves other bytes under the same ETag and date: If-Range matches.
    origin.set_default("liar.bin", None)
    origin.set_content("liar.bin", new, **validators)

    second = run_measured(*get(origin, "liar.bin", out, old), cwd=cwd)

    assert_failed_cleanly(second, out, "integrity")
    assert not list(cwd.glob("liar.bin.modelhaul.*")), "the mixed partial file was kept"


@pytest.mark.parametrize("when", ["probe", "segment", "resume"])
def test_gzip_forced_on_a_binary_file_saves_the_original(
    origin: Origin, cwd: Path, when: str
) -> None:
    data = blob(SEGMENTED, seed=25)
    assert gzip.decompress(gzip.compress(data)) == data
    origin.add_file("gz.bin", data)
    out = cwd / "gz.bin"
    if when == "resume":  # a partial download first, then the origin starts compressing
        origin.plan("gz.bin", [Fault(truncate_after=3 * MiB)])
        origin.set_default("gz.bin", Fault(truncate_after=0))
        run_measured(*get(origin, "gz.bin", out, data, "--retries", "0", "-x", "1"), cwd=cwd)
        assert (cwd / "gz.bin.modelhaul.journal").exists()
        origin.set_default("gz.bin", Fault(gzip=True))
    elif when == "probe":
        origin.set_default("gz.bin", Fault(gzip=True))
    else:
        origin.plan("gz.bin", [Fault(), Fault(gzip=True)])

    run = run_measured(*get(origin, "gz.bin", out, data, "-x", "2"), cwd=cwd)

    assert run.code == 0, run.stderr
    assert out.read_bytes() == data


def test_a_body_without_end_is_cut_at_its_content_length(origin: Origin, cwd: Path) -> None:
    """A file that claims 1 MiB in Content-Length, then keeps sending: 1 MiB is kept."""
    data = blob(MiB, seed=26)
    origin.add_file("claims1m.bin", data, accept_ranges=False)
    origin.set_default("claims1m.bin", Fault(extra_body=64 * MiB))
    out = cwd / "claims1m.bin"

    run = run_measured(*get(origin, "claims1m.bin", out, data), cwd=cwd)

    assert run.code == 0, run.stderr
    assert out.read_bytes() == data
    assert run.max_rss_mib < 150, f"peak RSS {run.max_rss_mib:.0f} MiB"


def test_an_endless_body_for_a_file_listed_as_1_mib_stops_and_leaves_nothing(
    origin: Origin, cwd: Path
) -> None:
    data = blob(MiB, seed=27)
    origin.add_file("endless.bin", data)
    origin.set_default("endless.bin", Fault(endless=True))
    manifest = cwd / "m.json"
    manifest.write_text(
        json.dumps(
            {
                "name": "org/endless",
                "files": [
                    {
                        "path": "endless.bin",
                        "size": len(data),
                        "sha256": sha(data),
                        "url": origin.url("endless.bin"),
                    }
                ],
            }
        )
    )

    run = run_measured("pull", str(manifest), "--json", "--retries", "1", cwd=cwd, timeout_s=60)

    assert run.code == 1, run.stderr
    assert run.result["error"]["category"] == "integrity"
    assert run.max_rss_mib < 150, f"peak RSS {run.max_rss_mib:.0f} MiB"
    origin.wait_idle()
    total = sum(r.bytes_sent for r in origin.requests_for("endless.bin"))
    assert total < 64 * MiB, f"read {total} bytes of an endless body"
    cache = Path(os.environ["HF_HUB_CACHE"])
    assert not [p for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts]


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "data:text/plain,hello", "loop"]
)
def test_refused_redirects_fail_at_once_through_the_cli(
    origin: Origin, cwd: Path, target: str
) -> None:
    if target == "loop":
        origin.add_redirect("r.bin", origin.url("r2", alt=True))
        origin.add_redirect("r2", origin.url("r.bin"))
    else:
        origin.add_redirect("r.bin", target)
    out = cwd / "r.bin"

    run = run_measured(*get(origin, "r.bin", out, b"x", "--retries", "5"), cwd=cwd)

    assert_failed_cleanly(run, out, "client_error")
    assert len(origin.requests_for("r.bin")) == 1, "a refused redirect is not retried"
    assert not any(p.name.startswith("r.bin") for p in cwd.iterdir())


def test_a_break_on_one_connection_and_a_change_on_another_restart_clean(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One connection breaks and writes what it holds; meanwhile another finds the file changed.

    A slow disk keeps the first write running across the restart the change forces. The
    restart must start from nothing: not believe it holds the bytes of that write (once a
    ValueError from the scheduler, or a hole in the file).
    """
    from modelhaul.disk import files

    real_pwritev = os.pwritev
    calls = iter(range(1_000_000))

    def slow_disk(fd: int, bufs: Any, offset: int) -> int:
        if next(calls) == 0:  # the write of what the broken connection held
            time.sleep(0.5)
        return real_pwritev(fd, bufs, offset)

    monkeypatch.setattr(files.os, "pwritev", slow_disk)
    old, new = blob(SEGMENTED, seed=28), blob(SEGMENTED, seed=29)
    origin.add_file("v.bin", old)
    origin.change_content_after("v.bin", 1, new)
    # The probe breaks at once; the second request sees the new ETag while the first write
    # still runs; the restart's probe answers after that write has ended.
    origin.plan("v.bin", [Fault(drop_after=32 * KiB), Fault(delay_s=0.1), Fault(delay_s=1.0)])
    out = tmp_path / "v.bin"

    result = download(origin.url("v.bin"), dest=out, state=tmp_path / "state")

    assert out.read_bytes() == new
    assert result.sha256 == sha(new)
