"""``run_doctor``: every check, concurrently where they are independent, in report order.

>>> checks = asyncio.run(run_doctor(DoctorConfig(cache_root=Path("/tmp/hub"))))  # doctest: +SKIP
>>> [c.name for c in checks if c.ok is False]  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio

from ..http.probe import open_probe_session
from ..sources.hf import HubRef
from .checks import Check, DoctorConfig
from .filesystem import (
    check_cache_writable,
    check_file_locks,
    check_free_space,
    check_partials,
    check_symlinks,
)
from .hub import PROBE_REPO, Source, check_source, check_token
from .network import check_clock, check_endpoint, check_proxy


async def run_doctor(config: DoctorConfig, source: Source | None = None) -> list[Check]:
    """Run every check (concurrently where they are independent), in report order."""
    probe_repo = source.repo_id if isinstance(source, HubRef) else PROBE_REPO
    root = config.cache_root
    async with open_probe_session(timeout_s=config.timeout_s) as probe, asyncio.TaskGroup() as tg:
        endpoint = tg.create_task(check_endpoint(config, probe))
        token = tg.create_task(check_token(config, probe, probe_repo=probe_repo))
        resolved = tg.create_task(check_source(config, source, probe)) if source else None
        writable = tg.create_task(check_cache_writable(root))
        symlinks = tg.create_task(check_symlinks(root))
        locks = tg.create_task(check_file_locks(root))
        partials = tg.create_task(check_partials(config))
    need = resolved.result()[1] if resolved else None
    free = await check_free_space(root, need_bytes=need, min_free_bytes=config.min_free_bytes)
    reached = endpoint.result()
    checks = [check_proxy(config.endpoint, config.proxies), reached.check]
    checks.append(check_clock(reached.server_time, reached.local_time, config.clock_tolerance_s))
    checks.append(token.result())
    if resolved:
        checks.append(resolved.result()[0])
    checks += [writable.result(), free, symlinks.result(), locks.result(), partials.result()]
    return checks


__all__ = ["run_doctor"]
