"""The user's next steps that name a setting or a command, as facts each face words.

The library says *which* step fits (an error's ``remedy``, a guidance step); the words depend on
who reads them. A ``Words`` table maps each :class:`Remedy` to a sentence, a ``str.format``
template whose fields (``{model}``, ``{cap}``...) the caller fills in:

- ``LIBRARY_WORDS`` (here) names the library's parameters (``SegmentPolicy.connections``), for
  an application calling ``modelhaul.download``;
- the CLI's table (``cli/words.py``) names its flags (``-x``);
- the service's (``server/words.py``) names what its API and page offer.

Nothing below ``cli/`` writes a command-line flag: it names a Remedy and lets the face word it.

    >>> say(LIBRARY_WORDS, Remedy.FORCE)
    'Wait for the download to finish, or remove it with force=True.'
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class Remedy(enum.StrEnum):
    """A next step that a face words in its own terms."""

    # The hints of errors (ModelhaulError.remedy).
    CHECK_INPUT = "check_input"  # invalid input: the syntax of the call or command
    RAISE_TIMEOUT = "raise_timeout"  # a stall: a longer stall timeout on a slow link
    SEND_CREDENTIALS = "send_credentials"  # HTTP 401: an Authorization header or HF_TOKEN
    CHECK_CREDENTIALS = "check_credentials"  # HTTP 403: the header's or HF_TOKEN's rights
    FEWER_CONNECTIONS = "fewer_connections"  # HTTP 429: fewer connections per file
    FREE_SPACE = "free_space"  # a full disk: free space, or another directory
    WRITABLE_DIR = "writable_dir"  # permission denied: another directory
    ALLOW_DOWNGRADE = "allow_downgrade"  # an https -> http redirect refused
    FORCE = "force"  # a model still downloading is removed only with force
    DOWNLOAD_DIR = "download_dir"  # the service's download directory is not writable
    FREE_SHORTFALL = "free_shortfall"  # a full disk, sizes known: {amount} {path}
    START_SERVICE = "start_service"  # nothing answers at the service's address
    CHECK_SERVICE = "check_service"  # what answers there is no modelhaul service
    SERVICE_TOKEN = "service_token"  # the service wants its access token
    # The steps of guidance (guidance/*) and the doctor's fixes.
    UNSTABLE_LINK = "unstable_link"
    SLOW_LINK = "slow_link"
    HEADER_RIGHTS = "header_rights"  # {host}
    HEADER_SEND = "header_send"
    CHECK_PATTERNS = "check_patterns"
    LOWER_RATE = "lower_rate"
    LOWER_LOAD = "lower_load"
    ALLOW_DOWNGRADE_STEP = "allow_downgrade_step"
    CHECK_HEADERS = "check_headers"
    REPAIR_MODEL = "repair_model"  # {model}
    REPAIR_AGAIN = "repair_again"
    BIGGER_DISK = "bigger_disk"
    FETCH_LESS = "fetch_less"
    GC_TO = "gc_to"  # {amount} {cap} {partials}
    GC_ANY = "gc_any"  # {amount} {partials}
    WRITABLE_CACHE = "writable_cache"
    SYNTAX = "syntax"
    OLD_PARTIALS = "old_partials"  # {resume} {part} {journal}
    # What evicting least recently used models would free (Inventory.suggest_lru).
    EVICT_ENOUGH = "evict_enough"  # {names} {cap_bytes}
    EVICT_SOME = "evict_some"  # {names} {cap_bytes}: it would help but not free enough
    NOTHING_TO_EVICT = "nothing_to_evict"


Words = Mapping[Remedy, str]


def say(words: Words, remedy: Remedy, /, **fields: object) -> str:
    """The sentence ``words`` has for ``remedy``, its fields filled in."""
    return words[remedy].format(**fields)


# For an application calling the library: its parameters and methods.
LIBRARY_WORDS: Words = MappingProxyType(
    {
        Remedy.CHECK_INPUT: "Check the arguments and any input file; see the function's "
        "documentation for the syntax.",
        Remedy.RAISE_TIMEOUT: "The server stopped sending data; try again, or raise "
        "Timeouts.stall_s (DownloadConfig.timeouts) on a very slow link.",
        Remedy.SEND_CREDENTIALS: "The server wants credentials: pass them with "
        "headers={{'Authorization': 'Bearer TOKEN'}} or set HF_TOKEN for the Hugging Face Hub.",
        Remedy.CHECK_CREDENTIALS: "Access denied: check the token or credentials passed in headers "
        "or HF_TOKEN, and that your account may read this file (gated models need their licence "
        "accepted).",
        Remedy.FEWER_CONNECTIONS: "The server is rate limiting: wait a little, then try again with "
        "fewer connections (SegmentPolicy.connections).",
        Remedy.FREE_SPACE: "Free some disk space or download somewhere else (another directory).",
        Remedy.WRITABLE_DIR: "Check that you may write to the target directory, or choose another.",
        Remedy.ALLOW_DOWNGRADE: "Set DownloadConfig.allow_https_downgrade if you trust this "
        "server.",
        Remedy.FORCE: "Wait for the download to finish, or remove it with force=True.",
        Remedy.DOWNLOAD_DIR: "Give ServiceConfig.download_dir a writable folder.",
        Remedy.FREE_SHORTFALL: "Free at least {amount} in {path}, or download somewhere else "
        "(another directory).",
        Remedy.START_SERVICE: "Start one with 'modelhaul serve', or give ServiceClient the "
        "address of a running one.",
        Remedy.CHECK_SERVICE: "Check the address given to ServiceClient.",
        Remedy.SERVICE_TOKEN: "Give ServiceClient the service's token; it is in the "
        "server-token file of the service's state directory.",
        Remedy.UNSTABLE_LINK: "On an unstable link use fewer connections "
        "(SegmentPolicy.connections=4).",
        Remedy.SLOW_LINK: "On a slow or congested link raise Timeouts.stall_s and use fewer "
        "connections (SegmentPolicy.connections=4).",
        Remedy.HEADER_RIGHTS: "Check the credentials passed in headers={{'Authorization': ...}} "
        "are valid for {host}.",
        Remedy.HEADER_SEND: "Pass them with headers={{'Authorization': 'Bearer TOKEN'}} "
        "(headers go "
        "to that host only, never to a redirect target).",
        Remedy.CHECK_PATTERNS: "Check the include/exclude patterns and the revision: files move "
        "between revisions.",
        Remedy.LOWER_RATE: "Use fewer connections: SegmentPolicy.connections=4 (connections per "
        "file) and ManagerConfig.max_active_files=2 (files at a time).",
        Remedy.LOWER_LOAD: "If it persists, lower the load you put on it: fewer connections per "
        "file (SegmentPolicy.connections) and files at a time (ManagerConfig.max_active_files).",
        Remedy.ALLOW_DOWNGRADE_STEP: "If you trust the server, allow the https -> http redirect "
        "with DownloadConfig.allow_https_downgrade.",
        Remedy.CHECK_HEADERS: "Check the URL and any headers passed.",
        Remedy.REPAIR_MODEL: "Verify {model} with repair=True: it refetches only the chunks that "
        "are bad.",
        Remedy.REPAIR_AGAIN: "Try again: the bad data was discarded and is fetched anew (verify "
        "with repair=True for a model in the cache).",
        Remedy.BIGGER_DISK: "Or put the cache on a bigger disk: set "
        "HF_HUB_CACHE=/path/on/bigger/disk "
        "(for a single file, download into another directory).",
        Remedy.FETCH_LESS: "Fetch only what you need: include=['*.safetensors', '*.json'].",
        Remedy.GC_TO: "Free {amount}: gc(max_size={cap_bytes}) evicts least recently used unpinned "
        "models until the cache fits {cap} {partials}.",
        Remedy.GC_ANY: "Free {amount}: gc(max_size=SIZE) with SIZE that much smaller than the "
        "cache evicts least recently used unpinned models {partials}.",
        Remedy.WRITABLE_CACHE: "Or point HF_HUB_CACHE (or HF_HOME) at a writable directory; for a "
        "single file, download into another directory.",
        Remedy.SYNTAX: "See the function's documentation for its syntax.",
        Remedy.OLD_PARTIALS: "Run the pull or get that started them again to resume{resume}. "
        "'modelhaul gc' removes partial downloads in the cache untouched for 7 days "
        "(Inventory.gc's partial_age_s for sooner); delete a *{part} file and its *{journal} to "
        "abandon it.",
        Remedy.EVICT_ENOUGH: "Removing the least recently used models would free enough: "
        "{names}; Inventory.gc(max_size={cap_bytes}) removes them.",
        Remedy.EVICT_SOME: "Removing the least recently used models would help but not free "
        "enough: {names}; Inventory.gc(max_size={cap_bytes}) removes them.",
        Remedy.NOTHING_TO_EVICT: "No unpinned model in the store could free that much.",
    }
)
