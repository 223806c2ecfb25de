"""Failure guidance: every category explains itself, with the fix specific to the cause."""

from __future__ import annotations

import ast
import inspect
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from modelhaul import guidance
from modelhaul.cli.words import CLI_WORDS
from modelhaul.errors import (
    CATEGORIES,
    Cancelled,
    DiskFull,
    HTTPStatusError,
    IntegrityError,
    InvalidInput,
    ModelhaulError,
    NetworkError,
    PermissionDenied,
    RedirectRefused,
    RetriesExhausted,
    StallTimeout,
    TruncatedBody,
    network_kind,
)
from modelhaul.guidance import Guidance, format_guidance
from modelhaul.remedies import LIBRARY_WORDS

HUB = "https://huggingface.co"
RESOLVE = f"{HUB}/org/model/resolve/main/model.safetensors"

ONE_PER_CATEGORY: dict[str, ModelhaulError] = {
    "network": NetworkError(
        "the connection to huggingface.co was reset", url=RESOLVE, kind="reset"
    ),
    "timeout": StallTimeout("no data from huggingface.co within the timeout"),
    "not_found": HTTPStatusError(404, "https://example.org/model.bin"),
    "auth": HTTPStatusError(401, RESOLVE),
    "rate_limited": HTTPStatusError(429, RESOLVE),
    "server_error": HTTPStatusError(503, RESOLVE),
    "client_error": HTTPStatusError(400, "https://example.org/model.bin"),
    "integrity": IntegrityError("sha256 mismatch for model.bin"),
    "disk_full": DiskFull("the disk is full while writing /data/model.bin"),
    "permission": PermissionDenied("cannot write /data/model.bin: Permission denied"),
    "invalid_input": InvalidInput("bad URL 'ftp://x'"),
    "cancelled": Cancelled("cancelled"),
}


def explain(err: ModelhaulError, **kw: Any) -> Guidance:
    """Guidance as the CLI shows it: steps that name a setting in its words (its flags)."""
    return guidance.explain(err, words=CLI_WORDS, **kw)


def text_of(g: Guidance) -> str:
    return "\n".join([g.what, g.why, *g.steps])


def test_the_table_covers_every_category() -> None:
    assert set(ONE_PER_CATEGORY) == set(CATEGORIES)


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_has_a_reason_and_steps(category: str) -> None:
    err = ONE_PER_CATEGORY[category]
    assert err.category == category
    g = explain(err)
    assert g.what == err.message
    assert g.why
    assert g.steps and all(s.strip() for s in g.steps)
    assert g.to_dict() == {"what": g.what, "why": g.why, "steps": list(g.steps)}


# (error, endpoint, model, cache_root, substrings the guidance must contain)
CASES: list[tuple[str, ModelhaulError, dict[str, str], list[str]]] = [
    (
        "gated: the model page to accept, then a token",
        HTTPStatusError(401, RESOLVE, error_code="GatedRepo"),
        {},
        [f"{HUB}/org/model", "accept the licence", f"{HUB}/settings/tokens", "HF_TOKEN"],
    ),
    (
        "gated with a model name and a private endpoint",
        HTTPStatusError(403, "https://hub.corp/api/models/org/model", error_code="GatedRepo"),
        {"endpoint": "https://hub.corp/", "model": "hf://org/model@v1"},
        ["https://hub.corp/org/model while logged in", "https://huggingface.co/settings/tokens"],
    ),
    (
        "401 from the Hub: a new token",
        HTTPStatusError(401, f"{HUB}/api/whoami-v2"),
        {},
        ["did not accept the token", f"{HUB}/settings/tokens", "HF_TOKEN", "modelhaul doctor"],
    ),
    (
        "403 from the Hub: token permissions",
        HTTPStatusError(403, RESOLVE),
        {},
        ["fine-grained", "accept the licence", "HF_TOKEN"],
    ),
    (
        "401 from another host: a header, not HF_TOKEN",
        HTTPStatusError(401, "https://files.example.org/model.bin"),
        {},
        ["files.example.org", "-H 'Authorization: Bearer TOKEN'"],
    ),
    (
        "403 from a CDN: an expired presigned link",
        HTTPStatusError(403, "https://cdn.example.net/blob?X-Amz-Signature=x"),
        {},
        ["expire"],
    ),
    (
        "repo not found without a token",
        HTTPStatusError(401, f"{HUB}/org/model", error_code="RepoNotFound"),
        {},
        ["private", "no token was sent", "HF_TOKEN", f"{HUB}/org/model"],
    ),
    (
        "repo not found with a token",
        HTTPStatusError(404, f"{HUB}/org/model", error_code="RepoNotFound"),
        {"endpoint": "http://127.0.0.1:9"},
        ["this token's account", "HF_ENDPOINT is http://127.0.0.1:9"],
    ),
    (
        "revision not found",
        HTTPStatusError(
            404, f"{HUB}/api/models/org/model/revision/v9", error_code="RevisionNotFound"
        ),
        {},
        ["branch, tag or commit", f"{HUB}/org/model/tree/main", "@REVISION"],
    ),
    (
        "entry not found",
        HTTPStatusError(404, RESOLVE, error_code="EntryNotFound"),
        {},
        ["no file at that path", f"{HUB}/org/model/tree/main", "--include"],
    ),
    (
        "rate limited with Retry-After",
        HTTPStatusError(429, RESOLVE, retry_after_s=42),
        {},
        ["Wait 42 s", "Retry-After", "-x 4", "HF_TOKEN"],
    ),
    (
        "rate limited for long, inside RetriesExhausted",
        RetriesExhausted(HTTPStatusError(429, RESOLVE, retry_after_s=600), []),
        {},
        ["Wait 10 min", "-x"],
    ),
    (
        "rate limited without Retry-After",
        HTTPStatusError(429, "https://example.org/a"),
        {},
        ["Wait a minute", "-x 4"],
    ),
    (
        "TLS failure: SSL_CERT_FILE",
        NetworkError(
            "TLS verification failed for huggingface.co: [SSL: CERTIFICATE_VERIFY_FAILED]",
            hint="...",
            kind="tls",
        ),
        {},
        ["SSL_CERT_FILE", "corporate proxy", "clock"],
    ),
    (
        "DNS failure",
        NetworkError(
            "cannot connect to nohub.invalid (host name not found)",
            url="https://nohub.invalid/api/models/org/model",
            kind="dns",
        ),
        {"endpoint": "https://nohub.invalid"},
        ["did not resolve", "HF_ENDPOINT (now https://nohub.invalid)", "HTTPS_PROXY", "NO_PROXY"],
    ),
    (
        "connection refused",
        NetworkError(
            "cannot reach the Hub at http://127.0.0.1:9: [Errno 111] Connection refused",
            url="http://127.0.0.1:9",
            kind="refused",
        ),
        {"endpoint": "http://127.0.0.1:9"},
        ["nothing answered", "port", "HTTPS_PROXY", "modelhaul doctor"],
    ),
    (
        "generic network failure: proxy settings and offline mode",
        NetworkError("the connection to huggingface.co was reset", url=RESOLVE, kind="reset"),
        {},
        ["HTTPS_PROXY", "NO_PROXY", "HF_HUB_OFFLINE=1", "resumes"],
    ),
    (
        "a dropped body resumes",
        RetriesExhausted(TruncatedBody("the connection to cdn ended early"), []),
        {},
        ["resumes from the partial file"],
    ),
    (
        "proxy wants credentials",
        HTTPStatusError(407, "https://huggingface.co/api/models/org/model"),
        {},
        ["HTTPS_PROXY=http://USER:PASSWORD@"],
    ),
    (
        "stall: --timeout and resume",
        RetriesExhausted(StallTimeout("no data from cdn within the timeout"), []),
        {},
        ["stall timeout", "--timeout", "resumes"],
    ),
    (
        "integrity with a model: verify --repair",
        IntegrityError("sha256 mismatch for model.safetensors"),
        {"model": "org/model"},
        ["modelhaul verify org/model --repair", "published checksum"],
    ),
    (
        "integrity without a model: run again",
        IntegrityError("sha256 mismatch for model.bin"),
        {},
        ["Run the same command again", "--repair"],
    ),
    (
        "disk full before starting: sizes and gc",
        DiskFull(
            "org/model needs 3.2 GiB more, only 1.0 GiB free in /srv/hub",
            need_bytes=int(3.2 * 2**30),
            free_bytes=2**30,
            path="/srv/hub",
            hint="Free at least 2.2 GiB in /srv/hub.",
        ),
        {"model": "org/model"},
        [
            "needs 3.2 GiB more",
            "only 1.0 GiB is free in /srv/hub",
            "at least 2.2 GiB",
            "modelhaul gc",
            "HF_HUB_CACHE",
            "--include",
        ],
    ),
    (
        "disk full while writing: the cache root, gc",
        DiskFull("the disk is full while writing /srv/hub/blobs/x.modelhaul.part"),
        {"cache_root": "/srv/hub"},
        ["filled up while writing in /srv/hub", "modelhaul gc", "HF_HUB_CACHE"],
    ),
    (
        "permission: the cache root, HF_HUB_CACHE",
        PermissionDenied("cannot write the model store at /srv/hub: Read-only file system"),
        {"cache_root": "/srv/hub"},
        ["/srv/hub", "HF_HUB_CACHE", "modelhaul doctor"],
    ),
    (
        "a refused downgrade redirect",
        RedirectRefused(
            "refusing an https -> http downgrade redirect to evil.example", reason="downgrade"
        ),
        {},
        ["--allow-insecure-redirects"],
    ),
    (
        "server error on the Hub: status page",
        RetriesExhausted(HTTPStatusError(503, RESOLVE), []),
        {},
        ["HTTP 503", "status.huggingface.co", "run the same command again"],
    ),
    (
        "invalid input keeps the error's own hint",
        InvalidInput("bad header 'x'", hint="Write headers as -H 'Name: value'."),
        {},
        ["-H 'Name: value'", "--help"],
    ),
]


@pytest.mark.parametrize(
    ("err", "kw", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_guidance_is_specific_to_the_cause(
    err: ModelhaulError, kw: dict[str, str], needles: list[str]
) -> None:
    text = text_of(explain(err, **kw))
    for needle in needles:
        assert needle in text, f"{needle!r} missing from:\n{text}"


def test_retries_exhausted_is_explained_by_its_last_error_but_says_it_gave_up() -> None:
    last = HTTPStatusError(429, RESOLVE, retry_after_s=5)
    g = explain(RetriesExhausted(last, [last, last]))
    assert "gave up after 2 attempts" in g.what
    assert g.steps == explain(last).steps


def test_disk_full_with_the_cache_size_gives_the_gc_command_that_frees_enough() -> None:
    err = DiskFull(
        "org/model needs 3.0 GiB more, only 1.0 GiB free in /srv/hub",
        need_bytes=3 * 2**30,
        free_bytes=2**30,
        path="/srv/hub",
    )
    g = explain(err, store_bytes=10 * 2**30)
    assert "'modelhaul gc --max-size 8G'" in g.steps[0]
    assert "at least 2.0 GiB" in g.steps[0]
    small = explain(err, store_bytes=2 * 2**30 + 300 * 2**20)
    assert "--max-size 300M" in small.steps[0]


def test_tls_is_not_mistaken_for_dns_or_the_other_way_round() -> None:
    # The kind comes from the error's type where it is translated (see network_kind), never
    # from the message: a message that names the other kind does not mislead guidance.
    dns = NetworkError(
        "Cannot connect to host x:443 ssl:default [Name or service not known]",
        kind=network_kind(socket.gaierror(socket.EAI_NONAME, "Name or service not known")),
    )
    tls = NetworkError(
        "connection to x failed: [SSL: WRONG_VERSION_NUMBER] wrong version number",
        kind=network_kind(ssl.SSLCertVerificationError(1, "certificate verify failed")),
    )
    assert "SSL_CERT_FILE" not in text_of(explain(dns))
    assert "SSL_CERT_FILE" in text_of(explain(tls))


def test_format_guidance_numbers_steps_under_a_why_line() -> None:
    g = Guidance(what="w", why="because", steps=("first", "second"))
    assert format_guidance(g) == ["  why: because", "  try: 1. first", "       2. second"]
    assert format_guidance(Guidance(what="w", why="", steps=())) == []


def test_guidance_reads_facts_never_the_message() -> None:
    """The message is shown as 'what' and read nowhere else: guidance is computed from fields."""
    package = Path(inspect.getfile(guidance)).parent
    tree = ast.Module(
        body=[ast.parse(f.read_text()) for f in sorted(package.glob("*.py"))], type_ignores=[]
    )
    reads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "message"]
    whats = [
        k.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        for k in n.keywords
        if k.arg == "what"
    ]
    assert reads and all(any(r is w for w in whats) for r in reads)
    # Regular expressions parse URLs (a field) only.
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("match", "search"):
            assert ast.unparse(node.args[1]) == "path", ast.unparse(node)


def test_an_unknown_network_kind_does_not_guess_from_words() -> None:
    err = NetworkError("Cannot connect: [Errno -2] Name or service not known, certificate")
    text = text_of(explain(err))
    assert "did not resolve" not in text and "SSL_CERT_FILE" not in text


# A command-line flag as the CLI's words write it: -x, -H, --timeout, --max-size... (not the
# shell's 'ls -ld', which every face may name).
FLAG = re.compile(r"(?<![\w-])(?<!ls )--?[a-zA-Z][a-z-]*\b")


@pytest.mark.parametrize(
    ("err", "kw", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_library_words_the_same_steps_without_flags(
    err: ModelhaulError, kw: dict[str, str], needles: list[str]
) -> None:
    """``explain`` without words is for an application calling the library: the same steps,
    naming its parameters where the CLI names its flags."""
    library, cli = guidance.explain(err, **kw), explain(err, **kw)
    assert (library.what, library.why, len(library.steps)) == (cli.what, cli.why, len(cli.steps))
    if not (isinstance(err, InvalidInput) and err.remedy is None):  # its own hint is a step
        assert not FLAG.findall(text_of(library)), text_of(library)


def test_every_remedy_has_words_for_the_cli_and_the_library() -> None:
    from modelhaul.remedies import Remedy
    from modelhaul.server.words import SERVICE_WORDS

    assert set(CLI_WORDS) == set(LIBRARY_WORDS) == set(SERVICE_WORDS) == set(Remedy)
    for words in (LIBRARY_WORDS, SERVICE_WORDS):
        flagged = {r: w for r, w in words.items() if FLAG.findall(w)}
        assert not flagged, flagged
