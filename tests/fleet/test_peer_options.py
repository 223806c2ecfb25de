"""The pull command's peer options: checked before any transfer, from the flag or the env."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import cli_env, modelhaul_cmd


def _pull(*args: str, **env: str) -> tuple[int, dict[str, object]]:
    out = subprocess.run(
        modelhaul_cmd("pull", "org/model", "--json", *args),
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(HF_ENDPOINT="http://127.0.0.1:9", **env),
    )
    return out.returncode, json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("--peers", "http://10.0.0.2:8471,ftp://x"), {}, "--peers"),
        ((), {"MODELHAUL_PEERS": "ftp://x"}, "--peers"),
        (("--peers", "http://10.0.0.2:8471", "--slice-size", "1K"), {}, "--slice-size"),
        # The service would pull without them: refused, not ignored.
        (("--via-server", "--peers", "http://10.0.0.2:8471"), {}, "--via-server"),
        (("--via-server", "--slice-size", "1M"), {}, "--via-server"),
    ],
)
def test_bad_peer_options_fail_as_invalid_input(
    args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    code, result = _pull(*args, **env)
    assert code == 2
    error = result["error"]
    assert isinstance(error, dict)
    assert error["category"] == "invalid_input"
    assert named in str(error["message"])
