"""The service's words for the next steps the library names: what its API and web page offer.

A download here is steered from the page or the API (resume, retry, cancel), not from a
command line, so no flag is named; steps this table leaves out keep the library's words.
"""

from __future__ import annotations

from types import MappingProxyType

from ..remedies import LIBRARY_WORDS, Remedy, Words

SERVICE_WORDS: Words = MappingProxyType(
    {
        **LIBRARY_WORDS,
        Remedy.CHECK_INPUT: "Check the request; /openapi.json describes each field.",
        Remedy.RAISE_TIMEOUT: "The server stopped sending data; resume the download, which "
        "goes on from the data kept.",
        Remedy.SEND_CREDENTIALS: "The server wants credentials; for the Hugging Face Hub, start "
        "the service with HF_TOKEN set.",
        Remedy.CHECK_CREDENTIALS: "Access denied: check the service's HF_TOKEN, and that its "
        "account may read this file (gated models need their licence accepted).",
        Remedy.FEWER_CONNECTIONS: "The server is rate limiting: wait a little, then resume the "
        "download.",
        Remedy.FREE_SPACE: "Free some disk space on the service's machine, then resume the "
        "download.",
        Remedy.WRITABLE_DIR: "Check that the service may write to the target directory.",
        Remedy.ALLOW_DOWNGRADE: "The service does not follow https -> http redirects; check "
        "the URL.",
        Remedy.FORCE: "Wait for the download to finish, then remove the model.",
        Remedy.DOWNLOAD_DIR: "Start the service with a writable download directory.",
        Remedy.FREE_SHORTFALL: "Free at least {amount} in {path} on the service's machine, then "
        "resume the download.",
        Remedy.SERVICE_TOKEN: "Send 'Authorization: Bearer TOKEN' (the modelhaul command reads "
        "it from MODELHAUL_TOKEN); the token is in the server-token file of the service's "
        "state directory.",
        Remedy.EVICT_ENOUGH: "Removing the least recently used models would free enough: "
        "{names}; POST /api/models/gc with max_size {cap_bytes} removes them.",
        Remedy.EVICT_SOME: "Removing the least recently used models would help but not free "
        "enough: {names}; POST /api/models/gc with max_size {cap_bytes} removes them.",
    }
)
