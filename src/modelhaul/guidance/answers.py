"""Guidance for a server's answer: authentication, gated and missing repositories, missing
files, rate limits, server and client errors."""

from __future__ import annotations

from ..errors import ModelhaulError, RedirectReason, RedirectRefused, human_duration
from ..remedies import Remedy
from .context import (
    DEFAULT_ENDPOINT,
    DOCTOR_COMMAND,
    SET_TOKEN,
    Context,
    error_code,
    host_of,
    is_hub,
    page_of,
)


def auth(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    code = error_code(err)
    status = getattr(err, "status", None)
    if code == "GatedRepo":
        return _gated(err, ctx)
    if code == "RepoNotFound":
        return _repo_not_found(err, ctx)
    if not is_hub(err, ctx):
        return _auth_elsewhere(err, ctx, status)
    set_token = SET_TOKEN
    if status == 403:
        return (
            "the Hub knows the token but it may not read this repository: a fine-grained token "
            "without access to it, or a gated model whose licence this account has not accepted.",
            [
                f"Open {page_of(err, ctx)} while logged in and accept the licence if it asks.",
                f"Check the token's permissions at {ctx.tokens_page} (a 'read' token, or a "
                "fine-grained one with read access to this repository).",
                set_token,
            ],
        )
    return (
        "the Hub did not accept the token: it is missing, mistyped, revoked or expired.",
        [
            f"Create a new token with 'read' access at {ctx.tokens_page}.",
            set_token,
            f"Check it with '{DOCTOR_COMMAND}': the token check says whether the Hub accepts it.",
        ],
    )


def _gated(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    page = page_of(err, ctx)
    return (
        "the model is gated: its authors require each account to accept their licence before "
        "downloading, and the token sent (if any) is not from an account that has.",
        [
            f"Open {page} while logged in and accept the licence (some need the authors' "
            "approval, which can take a while).",
            f"Create a 'read' token for that same account at {ctx.tokens_page}.",
            SET_TOKEN,
        ],
    )


def _repo_not_found(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    status = getattr(err, "status", None)
    no_token = status == 401
    why = (
        "the Hub has no such repository, or it is private and no token was sent."
        if no_token
        else "the Hub has no such repository that this token's account may see."
    )
    steps = [
        "Check the name: ORG/NAME exactly as in the address of the model page "
        f"({page_of(err, ctx)}).",
    ]
    if no_token:
        steps.append(
            f"If the repository is private, create a 'read' token at {ctx.tokens_page} and "
            "set it in HF_TOKEN."
        )
    else:
        steps.append(
            "If the repository is private, use a token of an account (or organisation member) "
            f"that can read it; see {ctx.tokens_page}."
        )
    if ctx.endpoint != DEFAULT_ENDPOINT:
        steps.append(f"HF_ENDPOINT is {ctx.endpoint}: check the repository exists there.")
    return why, steps


def _auth_elsewhere(err: ModelhaulError, ctx: Context, status: int | None) -> tuple[str, list[str]]:
    host = host_of(err)
    if status == 403:
        return (
            f"{host} refused access: the credentials are wrong or lack the right, or a "
            "presigned link expired.",
            [
                "If the URL came from another tool with a signature in it, get a fresh one: "
                "such links expire.",
                ctx.say(Remedy.HEADER_RIGHTS, host=host),
            ],
        )
    return (
        f"{host} wants credentials that were not sent or were not accepted.",
        [ctx.say(Remedy.HEADER_SEND)],
    )


def not_found(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    code = error_code(err)
    if code == "RepoNotFound":
        return _repo_not_found(err, ctx)
    page = page_of(err, ctx)
    if code == "RevisionNotFound":
        return (
            "the repository exists but has no branch, tag or commit of that name.",
            [
                f"Check the revision after '@'; {page}/tree/main shows the branches and tags.",
                "Leave out '@REVISION' to get the default branch (main).",
            ],
        )
    if code == "EntryNotFound":
        return (
            "the repository and revision exist but hold no file at that path.",
            [
                f"Check the file name and folder on {page}/tree/main (names are case-sensitive).",
                ctx.say(Remedy.CHECK_PATTERNS),
            ],
        )
    if is_hub(err, ctx):
        return (
            "the Hub has nothing at that address.",
            [
                f"Check the model name and the path; browse {page}.",
                f"HF_ENDPOINT is {ctx.endpoint}: check it points at a Hub or a full mirror.",
            ],
        )
    return (
        f"{host_of(err)} has no file at that address (moved, deleted or mistyped).",
        ["Check the URL: open it in a browser, or get a fresh link where you found it."],
    )


def rate_limited(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    wait_s = getattr(err, "retry_after_s", None)
    if wait_s is not None and wait_s > 0:
        wait = (
            f"Wait {human_duration(wait_s, least_s=1)} (the server asked for that in "
            "Retry-After), then run the same command again."
        )
    else:
        wait = "Wait a minute, then run the same command again: finished files are kept."
    steps = [wait, ctx.say(Remedy.LOWER_RATE)]
    why = f"{host_of(err)} limits how many requests a client may send in a time window."
    if is_hub(err, ctx):
        why = (
            "the Hub limits how many requests a client may send in a time window; models with "
            "many small files reach the limit fastest."
        )
        steps.append(
            f"Set HF_TOKEN (a token from {ctx.tokens_page}): logged-in requests get a higher limit."
        )
    return why, steps


def server_error(err: ModelhaulError, ctx: Context) -> tuple[str, list[str]]:
    status = getattr(err, "status", None)
    what = f"HTTP {status}" if status else "an error"
    steps = ["Wait a few minutes and run the same command again: finished data is kept."]
    if is_hub(err, ctx) and ctx.endpoint == DEFAULT_ENDPOINT:
        steps.append("Check https://status.huggingface.co for an ongoing incident.")
    else:
        steps.append(f"Try a mirror, or check the status of {host_of(err)}.")
    steps.append(ctx.say(Remedy.LOWER_LOAD))
    return f"{host_of(err)} answered {what}: a problem on the server's side, usually brief.", steps


def client_error(err: ModelhaulError, ctx: Context) -> tuple[str | None, list[str]]:
    status = getattr(err, "status", None)
    if status == 407:
        return (
            "the proxy wants a user name and password.",
            [
                "Put them in the proxy URL: HTTPS_PROXY=http://USER:PASSWORD@proxy.example:3128 "
                "(and HTTP_PROXY likewise).",
                f"Run '{DOCTOR_COMMAND}' to see which proxy is in use for the endpoint.",
            ],
        )
    if isinstance(err, RedirectRefused):
        steps = [
            "Check the URL: the server sends modelhaul somewhere it will not follow.",
        ]
        if err.reason is RedirectReason.DOWNGRADE:
            steps.append(ctx.say(Remedy.ALLOW_DOWNGRADE_STEP))
        return "the server redirected to a loop, a non-HTTP address or from https to http.", steps
    if status is not None:
        return (
            f"{host_of(err)} refused the request (HTTP {status}); the URL or a header is wrong "
            "for it.",
            [
                ctx.say(Remedy.CHECK_HEADERS),
                "Check that an HTTPS_PROXY in use passes the request through unchanged.",
            ],
        )
    # Nothing known beyond the message and its hint, which are shown already.
    return None, []
