"""Manifests: a model as a list of URLs with sizes and SHA-256, in TOML, JSON or YAML.

    name = "org/model"                 # required; stored as models--org--model
    revision = "v1"                    # optional
    [[files]]
    path = "model.safetensors"         # required, relative, inside the model folder
    size = 123456789                   # required, bytes
    sha256 = "9f86d0..."               # required
    url = "https://a.example/model.safetensors"          # required
    mirrors = ["https://b.example/model.safetensors"]    # optional

The commit of a manifest model is derived from its content, so the same manifest always lands
in the same snapshot and a changed one in a new snapshot.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Timeouts
from ..errors import InvalidInput
from ..policy.paths import safe_relpath
from ..policy.urls import check_url
from ..policy.validate import check_repo_id, check_revision
from .model import ModelFile, ModelSpec, check_paths

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILE_SIZE = 2**53


def parse_manifest_text(text: str, *, fmt: str, source: str = "manifest") -> ModelSpec:
    """Parse and validate; every problem is an InvalidInput naming the field and entry."""
    return manifest_from_data(decode_manifest(text, fmt=fmt, source=source), source=source)


def decode_manifest(text: str, *, fmt: str, source: str = "manifest") -> Any:
    """The data of a manifest in ``fmt`` (toml, json or yaml), not yet validated.

    Raises:
        InvalidInput: an unknown format, or text that is not valid in it.
    """
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "json":
            return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _not_valid(exc, fmt=fmt, source=source) from None
    if fmt == "yaml":
        import yaml  # only for YAML: PyYAML costs 15-20 ms that a TOML or JSON pull never pays

        try:
            return yaml.safe_load(text)
        except (ValueError, yaml.YAMLError, RecursionError) as exc:
            raise _not_valid(exc, fmt=fmt, source=source) from None
    raise InvalidInput(f"{source}: unknown manifest format {fmt!r}")


def _not_valid(exc: Exception, *, fmt: str, source: str) -> InvalidInput:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InvalidInput(f"{source}: not valid {fmt.upper()}: {first}")


def manifest_from_data(data: Any, *, source: str = "manifest") -> ModelSpec:
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: the manifest must be a table/object at the top level")
    name = _field(data, "name", str, source)
    try:
        check_repo_id(name)
    except InvalidInput as exc:
        raise InvalidInput(
            f"{source}: name: {exc.message}", hint=exc.hint, remedy=exc.remedy
        ) from None
    revision = data.get("revision")
    if revision is not None:
        if not isinstance(revision, str):
            raise InvalidInput(f"{source}: revision must be a string")
        try:
            check_revision(revision)
        except InvalidInput as exc:
            raise InvalidInput(f"{source}: revision: {exc.message}") from None
    entries = data.get("files")
    if entries is None:
        raise InvalidInput(f"{source}: the required field 'files' is missing")
    if not isinstance(entries, list) or not entries:
        raise InvalidInput(f"{source}: 'files' must be a list with at least one entry")
    files = tuple(_file(e, i, source) for i, e in enumerate(entries))
    check_paths(files, source)
    canonical = json.dumps(
        {"name": name, "files": [f.to_json() for f in sorted(files, key=lambda f: f.path)]},
        sort_keys=True,
    )
    commit = hashlib.sha1(canonical.encode(), usedforsecurity=False).hexdigest()
    return ModelSpec(
        repo_id=name,
        commit=commit,
        files=files,
        revision=revision or "main",
        source="manifest",
    )


def _field(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise InvalidInput(f"{where}: the required field {key!r} is missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInput(
            f"{where}: {key!r} must be {'a string' if kind is str else 'an integer'}, "
            f"got {type(value).__name__}"
        )
    return value


def _file(entry: Any, index: int, source: str) -> ModelFile:
    where = f"{source}: files[{index}]"
    if not isinstance(entry, dict):
        raise InvalidInput(f"{where}: each file entry must be a table/object")
    path = _field(entry, "path", str, where)
    where = f"{where} ({path!r})" if isinstance(path, str) else where
    path = safe_relpath(path, where=f"{where}: path")
    size = _field(entry, "size", int, where)
    if not 0 <= size <= MAX_FILE_SIZE:
        raise InvalidInput(f"{where}: size {size} is out of range")
    sha256 = _field(entry, "sha256", str, where)
    if not _HEX64.match(sha256):
        raise InvalidInput(f"{where}: sha256 must be 64 hexadecimal digits")
    url = _field(entry, "url", str, where)
    mirrors = entry.get("mirrors", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        raise InvalidInput(f"{where}: mirrors must be a list of URLs")
    urls = [url, *mirrors]
    for i, u in enumerate(urls):
        try:
            check_url(u)
        except InvalidInput as exc:
            field = "url" if i == 0 else f"mirrors[{i - 1}]"
            raise InvalidInput(f"{where}: {field}: {exc.message}") from None
    return ModelFile(
        path=path, size=size, blob_id=sha256.lower(), urls=tuple(urls), sha256=sha256.lower()
    )


def format_of(name: str) -> str | None:
    lower = name.lower().split("?", 1)[0]
    if lower.endswith(".toml"):
        return "toml"
    if lower.endswith(".json"):
        return "json"
    if lower.endswith((".yaml", ".yml")):
        return "yaml"
    return None


def sniff_format(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")) and not stripped.startswith("[["):
        return "json"
    if re.search(r"^\s*\[\[files\]\]", text, re.MULTILINE) or re.search(
        r"^\s*name\s*=", text, re.MULTILINE
    ):
        return "toml"
    return "yaml"


def read_manifest_text(path: Path) -> str:
    """A local manifest's text, refused above ``MAX_MANIFEST_BYTES`` or if unreadable."""
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InvalidInput(f"{path}: the manifest is larger than 16 MiB")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read manifest {path}: {exc}") from None


def load_manifest_file(path: Path) -> ModelSpec:
    text = read_manifest_text(path)
    return parse_manifest_text(
        text, fmt=format_of(path.name) or sniff_format(text), source=str(path)
    )


def is_manifest_source(text: str) -> bool:
    return format_of(text) is not None or Path(text).is_file()


async def fetch_manifest(
    url: str, *, timeouts: Timeouts | None = None, headers: Mapping[str, str] | None = None
) -> ModelSpec:
    """A manifest from a URL (at most 16 MiB, UTF-8), parsed and validated."""
    # The transport (aiohttp) only for a manifest at a URL: parsing 'pull' goes without it.
    from ..http.session import Transport

    t = timeouts or Timeouts()
    async with Transport(connect_timeout_s=t.connect_s, stall_timeout_s=t.stall_s) as tr:
        resp = await tr.request("GET", url, headers=dict(headers or {}))
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := await resp.read_chunk():
                size += len(chunk)
                if size > MAX_MANIFEST_BYTES:
                    raise InvalidInput(f"manifest {url} is larger than 16 MiB")
                chunks.append(chunk)
        finally:
            resp.close()
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"manifest {url} is not UTF-8 text") from None
    return parse_manifest_text(text, fmt=format_of(url) or sniff_format(text), source=url)
