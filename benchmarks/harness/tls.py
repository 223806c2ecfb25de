"""A test CA and a server certificate for 127.0.0.1, made once with the openssl CLI in _work/tls.

The certificates carry the extensions strict verifiers want (CA: basicConstraints critical,
keyUsage keyCertSign; server: SAN IP:127.0.0.1, serverAuth, key identifiers), so every client
can be given the CA alone. ECDSA P-256 keys, as CDNs commonly serve.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from .common import WORK, log

_SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def ensure_tls() -> TlsFiles:
    d = WORK / "tls"
    files = TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key")
    if all(p.exists() for p in (files.ca, files.cert, files.key)):
        return files
    log(f"generating a test CA and a certificate for 127.0.0.1 in {d}")
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(files.ca),
        "-days", "3650", "-subj", "/CN=modelhaul bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-keyout", str(files.key), "-out", str(d / "server.csr"),
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    (d / "server.ext").write_text(_SERVER_EXT)
    _openssl(
        "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(files.ca),
        "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(files.cert),
        "-days", "3650", "-extfile", str(d / "server.ext"),
    )  # fmt: skip
    files.key.chmod(0o644)  # nginx workers may run as another user
    return files
