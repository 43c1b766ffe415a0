"""The TLS settings every transport serves with: one server-side `ssl.SSLContext` from the
certificate chain and key files of --tls-cert and --tls-key.

TLS 1.2 is the oldest version offered and renegotiation is off; the ciphers, and everything
else, are the standard library's defaults (`ssl.create_default_context`), which track what is
safe. Handshakes are done without blocking: the connection core (`core/server.py`, under
HTTP and RESP) leaves them to asyncio, each within a bound.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence


class TLSSetupError(ValueError):
    """The certificate or key cannot be used; the message says which file and why."""


def server_context(cert_file: str, key_file: str, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """A server context presenting `cert_file` (a PEM chain, the server's certificate first)
    with `key_file`; `alpn` names the protocols offered in the handshake (HTTP: http/1.1)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A renegotiation mid-connection would make a read want a write: the event loops wait
    # for one or the other, and it is an old way to make a server do handshakes for free.
    context.options |= ssl.OP_NO_RENEGOTIATION
    for path in (cert_file, key_file):
        # load_cert_chain's OSError names no file (its filename is None): open each first,
        # so a missing or unreadable one is named.
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            reason = error.strerror or str(error)
            if isinstance(error, PermissionError):
                # In a container the file keeps its host owner and mode (a bind mount), and
                # the reader is the image's user: say which user was refused.
                reason += f" (to uid {os.getuid()})"
            raise TLSSetupError(f"cannot read {path}: {reason}") from error
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as error:
        raise TLSSetupError(
            f"cannot use the certificate {cert_file} with the key {key_file}: {error}"
        ) from error
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context
