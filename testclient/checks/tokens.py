"""The token check: with tokens, nothing is served without one, and a read token cannot
write. Given no token, that a request without one is served; what needs a token the test
client was not given is listed as skipped, never passed."""

from __future__ import annotations

from collections.abc import Callable

from testclient.checks.framework import CheckRun, Expectation, check, outcome_is, value_is
from testclient.clients import KVClient, KVRefused, Outcome, Reply


@check
def check_tokens(run: CheckRun, client: KVClient) -> None:
    """Given tokens: none or a wrong one is refused, a read token cannot write; else reads work.

    Steps that need a token the test client was not given are listed as skipped."""
    credentials = client.credentials
    key = run.fresh_key("tok")
    if credentials.token is None:
        run.expect(
            "read without a token (the test client was given none)",
            outcome_is(client.get(key), Outcome.NOT_FOUND),
        )
        run.skip(
            "requests without a token, or with a wrong one, are refused",
            "no token given (--kv-token): checked as a service without tokens",
        )
    else:
        anonymous = client.with_token(None)
        wrong = client.with_token(credentials.token + "x")
        try:
            run.expect("write without a token", refused(lambda: anonymous.put(key, b"no")))
            run.expect("read without a token", refused(lambda: anonymous.get(key)))
            run.expect("write with a wrong token", refused(lambda: wrong.put(key, b"no")))
        finally:
            anonymous.close()
            wrong.close()
        run.expect("nothing was written by them", outcome_is(client.get(key), Outcome.NOT_FOUND))
    if credentials.read_token is None:
        run.skip("a read token reads but cannot write", "no read token given (--kv-read-token)")
        return
    value = f"readonly-{run.tag}".encode()
    run.require(f"write {value!r}", outcome_is(client.put(key, value), Outcome.STORED))
    reader = client.with_token(credentials.read_token)
    try:
        run.expect("read it with the read token", value_is(reader.get(key), value))
        run.expect("write with the read token", refused(lambda: reader.put(key, b"no")))
        run.expect("delete with the read token", refused(lambda: reader.delete(key)))
    finally:
        reader.close()
    run.expect(f"the value is still {value!r}", value_is(client.get(key), value))


def refused(request: Callable[[], Reply]) -> Expectation:
    """The request is refused for its token (KVRefused), whatever else would have happened."""
    expected = "refused: the token does not allow it"
    try:
        reply = request()
    except KVRefused as refusal:
        return Expectation(expected, f"refused [{refusal}]", passed=True)
    return Expectation(expected, f"served: {reply}", passed=False)
