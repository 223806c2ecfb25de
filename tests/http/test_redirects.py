"""Redirects followed by hand, at the transport: what each hop carries and where the chain ends."""

from __future__ import annotations

import pytest

from modelhaul.errors import HTTPStatusError, RedirectRefused
from modelhaul.http.session import Transport
from origin import Origin

SECRET = {"Authorization": "Bearer hunter2", "Cookie": "session=1", "X-Keep": "yes"}


async def test_each_hop_carries_credentials_only_on_the_named_host(origin: Origin) -> None:
    origin.add_file("blob.bin", b"x" * 100)
    origin.add_redirect("same", "/hop")
    origin.add_redirect("hop", origin.url("blob.bin", alt=True))
    async with Transport() as tr:
        resp = await tr.request("GET", origin.url("same"), headers=SECRET)
        resp.close()
    assert resp.url == origin.url("blob.bin", alt=True)
    (hop,) = origin.requests_for("hop")
    assert hop.headers.get("Authorization") == SECRET["Authorization"]
    (cdn,) = origin.requests_for("blob.bin")
    assert "Authorization" not in cdn.headers and "Cookie" not in cdn.headers
    assert cdn.headers.get("X-Keep") == "yes"


async def test_credential_url_names_the_trusted_host(origin: Origin) -> None:
    origin.add_file("f.bin", b"y" * 10)
    async with Transport() as tr:
        resp = await tr.request(
            "GET", origin.url("f.bin"), headers=SECRET, credential_url=origin.url("x", alt=True)
        )
        resp.close()
    (r,) = origin.requests_for("f.bin")
    assert "Authorization" not in r.headers


async def test_too_many_redirects_are_refused(origin: Origin) -> None:
    origin.add_redirect("r0", "/r1")
    origin.add_redirect("r1", "/r2")
    origin.add_redirect("r2", "/r3")
    async with Transport(max_redirects=2) as tr:
        with pytest.raises(RedirectRefused, match="more than 2 redirects"):
            await tr.request("GET", origin.url("r0"))
    assert not origin.requests_for("r3")


async def test_an_error_status_at_the_end_of_the_chain_is_raised(origin: Origin) -> None:
    origin.add_redirect("gone", "/missing.bin")
    async with Transport() as tr:
        with pytest.raises(HTTPStatusError) as info:
            await tr.request("GET", origin.url("gone"))
    assert info.value.status == 404
    assert info.value.url == origin.url("missing.bin")
