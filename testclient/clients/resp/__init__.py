"""The test client's RESP client, in three layers as redis-py has them: `reader.py` (RESP2 on
the wire), `connection.py` (a socket, TLS and AUTH) and `commands.py` (`RespKVClient`: the
commands and what each reply means)."""

from testclient.clients.resp.commands import DEFAULT_PORT, SCHEMES, RespKVClient

__all__ = ["DEFAULT_PORT", "SCHEMES", "RespKVClient"]
