"""The Hugging Face mirror: what ``modelhaul serve`` answers under ``/hf`` (issue 16).

Stock ``huggingface_hub`` clients pointed at ``HF_ENDPOINT=http://HOST:PORT/hf`` get their
metadata relayed from the upstream Hub (with their own token) and their files from the service's
store, each file fetched upstream once by the engine however many clients ask.

- ``hub``: the upstream Hub's API as the mirror asks it (caller's token, one exchange each).
- ``answers``: what the mirror answers (relayed answers, the resolve header contract, errors).
- ``flights``: single flight: one engine download per missing blob, then store bookkeeping.
- ``bodies``: the bytes of a blob for one client, from the store or the growing partial file.
- ``access``: which callers upstream accepted, remembered briefly by a hash of their token.
- ``offline``: the store standing in for an unreachable upstream (info, paged trees).
- ``resume``: the record of fetches under way, so a restarted mirror goes on with them.
- ``traffic``: bytes served to clients and fetched upstream, per model, for the web page.
- ``core``: ``HubMirror``, the one object the server's routes call.
"""
