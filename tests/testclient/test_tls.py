"""The test client over TLS: https:// and rediss:// URLs, a private CA given with --ca-cert,
tokens as well; a certificate it cannot verify is reported as an unreachable service."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testclient.__main__ import main
from testclient.checks import CHECKS, Verdict, run_checks
from testclient.clients import Credentials, make_client
from tests.support.certificates import Certificates
from tests.support.tokens import READ_TOKEN, WRITE_TOKEN, serving_with_tokens


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One store with tokens over HTTPS and RESP over TLS: the URL of each, and the CA."""
    from tests.support.certificates import make_certificates

    certificates: Certificates = make_certificates(tmp_path_factory.mktemp("tls"))
    with serving_with_tokens(certificates) as urls:
        yield {**urls, "ca": str(certificates.ca_cert)}


@pytest.mark.parametrize("transport", ["http", "resp"])
def test_every_check_passes_over_tls_with_the_private_ca(
    urls: dict[str, str], transport: str
) -> None:
    credentials = Credentials(WRITE_TOKEN, READ_TOKEN, ca_cert=urls["ca"])
    client = make_client(urls[transport], (2.0, 5.0), credentials)
    try:
        results = run_checks(list(CHECKS), client)
    finally:
        client.close()

    ended = {result.test: result.verdict for result in results}
    assert set(ended.values()) <= {Verdict.PASSED, Verdict.SKIPPED}, ended
    assert ended["test_tokens"] is Verdict.PASSED


@pytest.mark.parametrize("transport", ["http", "resp"])
def test_without_the_ca_the_certificate_is_not_trusted(
    urls: dict[str, str], transport: str
) -> None:
    client = make_client(urls[transport], (2.0, 5.0), Credentials(WRITE_TOKEN))
    try:
        [result] = run_checks(["test_deletion"], client)
    finally:
        client.close()

    assert result.verdict is Verdict.UNREACHABLE
    assert "certificate verify failed" in result.steps[-1].actual


@pytest.mark.parametrize("transport", ["http", "resp"])
def test_the_cli_takes_ca_cert_and_the_token_from_the_environment(
    urls: dict[str, str],
    transport: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KV_TOKEN", WRITE_TOKEN)
    monkeypatch.setenv("KV_READ_TOKEN", READ_TOKEN)
    code = main(["run", "test_tokens", "--kv-url", urls[transport], "--ca-cert", urls["ca"]])

    report = capsys.readouterr().out
    assert code == 0, report
    assert "PASSED      test_tokens" in report
    assert WRITE_TOKEN not in report and READ_TOKEN not in report
