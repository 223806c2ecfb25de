"""The CLI's words for each next step the library names: its commands and flags.

The library says which step fits (a :class:`~modelhaul.remedies.Remedy`) and words it for its
own callers; what a user of ``modelhaul`` types is said here, one sentence per remedy (a
``str.format`` template, its fields filled in by whoever names the step).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from ..errors import ModelhaulError
from ..remedies import Remedy, Words

CLI_WORDS: Words = MappingProxyType(
    {
        Remedy.CHECK_INPUT: "Check the command line or the input file; run with --help for the "
        "syntax.",
        Remedy.RAISE_TIMEOUT: "The server stopped sending data; run again, or raise --timeout on "
        "a very slow link.",
        Remedy.SEND_CREDENTIALS: "The server wants credentials: pass them with -H "
        "'Authorization: Bearer TOKEN' or set HF_TOKEN for the Hugging Face Hub.",
        Remedy.CHECK_CREDENTIALS: "Access denied: check the token or credentials passed with -H "
        "or HF_TOKEN, and that your account may read this file (gated models need their licence "
        "accepted).",
        Remedy.FEWER_CONNECTIONS: "The server is rate limiting: wait a little, then run again "
        "with fewer connections (-x).",
        Remedy.FREE_SPACE: "Free some disk space or download somewhere else (-d DIR).",
        Remedy.WRITABLE_DIR: "Check that you may write to the target directory, or choose "
        "another with -d.",
        Remedy.ALLOW_DOWNGRADE: "Pass --allow-insecure-redirects if you trust this server.",
        Remedy.FORCE: "Wait for the download to finish, or pass --force.",
        Remedy.DOWNLOAD_DIR: "Pass --download-dir (or MODELHAUL_DOWNLOAD_DIR) naming a writable "
        "folder.",
        Remedy.FREE_SHORTFALL: "Free at least {amount} in {path}, or download elsewhere with "
        "-d DIR.",
        Remedy.START_SERVICE: "Start one with 'modelhaul serve', or point --server (or "
        "MODELHAUL_SERVER) at a running one.",
        Remedy.CHECK_SERVICE: "Check --server / MODELHAUL_SERVER.",
        Remedy.SERVICE_TOKEN: "Pass --token or set MODELHAUL_TOKEN; the token is in the "
        "server-token file of the service's state directory.",
        Remedy.UNSTABLE_LINK: "On an unstable link use fewer connections (-x 4).",
        Remedy.SLOW_LINK: "On a slow or congested link raise --timeout (seconds) and use fewer "
        "connections (-x 4).",
        Remedy.HEADER_RIGHTS: "Check the credentials passed with -H 'Authorization: ...' are "
        "valid for {host}.",
        Remedy.HEADER_SEND: "Pass them with -H 'Authorization: Bearer TOKEN' (headers go to that "
        "host only, never to a redirect target).",
        Remedy.CHECK_PATTERNS: "Check --include/--exclude patterns and the revision: files move "
        "between revisions.",
        Remedy.LOWER_RATE: "Use fewer connections: -x 4 (connections per file) and -j 2 (files "
        "at a time).",
        Remedy.LOWER_LOAD: "If it persists, lower the load you put on it: -x 4 -j 2.",
        Remedy.ALLOW_DOWNGRADE_STEP: "If you trust the server, allow the https -> http redirect "
        "with --allow-insecure-redirects.",
        Remedy.CHECK_HEADERS: "Check the URL and any -H headers.",
        Remedy.REPAIR_MODEL: "Run 'modelhaul verify {model} --repair': it refetches only the "
        "chunks that are bad.",
        Remedy.REPAIR_AGAIN: "Run the same command again: the bad data was discarded and is "
        "fetched anew ('modelhaul verify ORG/NAME --repair' for a model in the cache).",
        Remedy.BIGGER_DISK: "Or put the cache on a bigger disk: set "
        "HF_HUB_CACHE=/path/on/bigger/disk (for 'get', -d DIR).",
        Remedy.FETCH_LESS: "Fetch only what you need: --include '*.safetensors' --include "
        "'*.json'.",
        Remedy.GC_TO: "Free {amount}: 'modelhaul gc --max-size {cap}' evicts least recently used "
        "unpinned models until the cache fits {cap} {partials} (add --dry-run to see what "
        "first).",
        Remedy.GC_ANY: "Free {amount}: 'modelhaul ls' shows the cache's size; 'modelhaul gc "
        "--max-size SIZE' with SIZE that much smaller evicts least recently used unpinned models "
        "{partials} (add --dry-run to see what first).",
        Remedy.WRITABLE_CACHE: "Or point HF_HUB_CACHE (or HF_HOME) at a writable directory; for "
        "'get', use -d DIR.",
        Remedy.SYNTAX: "Run the command with --help for its syntax.",
        Remedy.OLD_PARTIALS: "Run the pull or get that started them again to resume{resume}. "
        "'modelhaul gc' removes partial downloads in the cache untouched for 7 days "
        "(--partial-age 1d for sooner); delete a *{part} file and its *{journal} to abandon it.",
        Remedy.EVICT_ENOUGH: "Removing the least recently used models would free enough: "
        "{names}; run: modelhaul gc --max-size {cap_bytes}",
        Remedy.EVICT_SOME: "Removing the least recently used models would help but not free "
        "enough: {names}; run: modelhaul gc --max-size {cap_bytes}",
        Remedy.NOTHING_TO_EVICT: "No unpinned model in the store could free that much.",
    }
)


def cli_hint(err: ModelhaulError) -> str:
    """The error's hint as the CLI says it: its flags for a remedy, else the hint as given."""
    return err.hint_in(CLI_WORDS)


def cli_error(err: ModelhaulError) -> dict[str, Any]:
    """The error's JSON object (category, message, hint) in the CLI's words."""
    return err.to_dict(CLI_WORDS)
