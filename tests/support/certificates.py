"""Certificates for TLS tests, made by the `openssl` command: a private CA and a server
certificate it signed for 127.0.0.1 and localhost. Made per test session, never committed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class Certificates:
    """The files of a private CA and of a server certificate it signed."""

    ca_cert: Path
    """The CA's certificate: what clients trust (--ca-cert, --cacert, ssl_ca_certs)."""
    cert: Path
    """The server's certificate (--tls-cert)."""
    key: Path
    """The server's private key (--tls-key)."""
    other_key: Path
    """A key that does not belong to `cert`."""


def make_certificates(directory: Path) -> Certificates:
    """A CA and a server certificate for 127.0.0.1 and localhost, valid for two days, in
    `directory`; raises RuntimeError if openssl is missing or fails."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is missing: apt-get install openssl")
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, request, cert = (
        directory / "server.key",
        directory / "server.csr",
        directory / "server.pem",
    )
    other_key = directory / "other.key"
    extensions = directory / "server.ext"
    extensions.write_text(SERVER_EXTENSIONS)
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        [
            *("req", "-x509", *new_key, "-keyout", ca_key, "-out", ca_cert, "-days", "2"),
            *("-subj", "/CN=kvservice test CA"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        ],
        ["req", *new_key, "-keyout", key, "-out", request, "-subj", "/CN=localhost"],
        [
            *("x509", "-req", "-in", request, "-CA", ca_cert, "-CAkey", ca_key),
            *("-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extensions),
        ],
        [
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            other_key,
        ],
    ):
        completed = subprocess.run(
            ["openssl", *map(str, command)], capture_output=True, text=True, check=False
        )
        if completed.returncode != 0:
            raise RuntimeError(f"openssl {command[0]} failed: {completed.stderr}")
    return Certificates(ca_cert, cert, key, other_key)
