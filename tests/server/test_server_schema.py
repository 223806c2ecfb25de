"""Fuzz every operation of the API from its own /openapi.json (schemathesis): valid and invalid
requests alike must never get a 5xx. Bounded: a few dozen examples per operation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from modelhaul.server.security import AccessPolicy
from origin import Origin
from server_harness import ServerThread, service_config, wait_state

pytestmark = [
    pytest.mark.timeout(120),
    # schemathesis' own strategies trip this hypothesis deprecation; nothing of ours.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
SKIP = {("GET", "/events")}  # an endless stream; tested in test_server_api


def test_no_server_errors(tmp_path: Path, origin: Origin) -> None:
    # hf:// and manifest pulls go to a closed port; URL downloads the fuzzer invents fail in
    # the background. Only the answers matter here.
    origin.add_file("seed.bin", b"s" * 4096)
    # Confined to the download directory: this process is the service's own user, and the
    # fuzzer's absolute 'out' and 'dir' values must not land anywhere on this machine.
    policy = AccessPolicy(bind_host="127.0.0.1", local_paths=False)
    with ServerThread(service_config(tmp_path), policy) as server, server.client() as api:
        # Real downloads for the fuzzed ids to act on: paused, completed, failed.
        for body in (
            {"url": origin.url("seed.bin"), "out": "paused.bin", "paused": True},
            {"url": origin.url("seed.bin"), "out": "done.bin"},
            {"url": origin.url("missing.bin"), "out": "failed.bin"},
        ):
            assert api.post("/api/downloads", json=body).status_code == 201
        wait_state(api, "2", ("completed",))
        wait_state(api, "3", ("failed",))
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        failures: list[str] = []
        started = time.monotonic()
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 17
        for op in operations:
            if (op.method.upper(), op.path) in SKIP:
                continue
            for mode, examples in EXAMPLES.items():
                _fuzz(op, mode, examples, server.url, failures)
        assert not failures, "\n".join(failures[:10])
        assert time.monotonic() - started < 90


def _fuzz(
    op: schemathesis.APIOperation,
    mode: GenerationMode,
    examples: int,
    base_url: str,
    failures: list[str],
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, timeout=15)
        if response.status_code >= 500:
            failures.append(
                f"{op.method.upper()} {op.path} -> {response.status_code}: "
                f"{response.text[:300]!r}\n  {case.as_curl_command()}"
            )

    try:
        run()
    except Unsatisfiable:
        # Nothing to make invalid (no parameters, no body): the positive run covered it.
        assert mode is GenerationMode.NEGATIVE
