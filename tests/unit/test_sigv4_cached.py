"""The cached SigV4 signer (``gateway.providers.aws.SigV4Signer``) signs exactly as botocore's own
``SigV4Auth.add_auth`` does, whatever the path, body, credentials, day and second, while deriving the
signing key once a day and the fixed canonical parts once per credentials."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from botocore import auth as botocore_auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.providers import aws
from gateway.providers.aws import AwsCredentials, SigV4Signer

HOST = "bedrock-runtime.eu-west-3.amazonaws.com"
ORIGIN = "https://" + HOST
PATHS = [
    "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
    "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream",
    "/model/amazon.titan-embed-text-v2%3A0/invoke",
    "/model/arn%3Aaws%3Abedrock%3Aeu-west-3%3A123456789012%3Ainference-profile%2Feu.claude/converse",
    "/model/m/converse",
]
BODIES = [b"", b"{}", b'{"messages":[{"role":"user","content":[{"text":"h\xc3\xa9 there"}]}]}', b"x" * 70000]


def _botocore(creds: Credentials, region: str, path: str, body: bytes, when: datetime.datetime,
              monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What botocore's own signer sends for the request, at ``when``."""
    monkeypatch.setattr(botocore_auth, "get_current_datetime", lambda: when)
    request = AWSRequest(method="POST", url=ORIGIN + path, data=body,
                         headers={"content-type": "application/json", "host": HOST})
    SigV4Auth(creds, "bedrock", region).add_auth(request)
    out = {"authorization": request.headers["Authorization"], "x-amz-date": request.headers["X-Amz-Date"]}
    if creds.token:
        out["x-amz-security-token"] = request.headers["X-Amz-Security-Token"]
    return out


def _at(when: datetime.datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws.time, "time", lambda: when.timestamp())


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////session+token=="])
def test_signatures_are_botocores(token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", token)
    signer = SigV4Signer(AwsCredentials(creds), "eu-west-3", ORIGIN, HOST)
    when = datetime.datetime(2026, 12, 7, 23, 59, 58, tzinfo=datetime.UTC)
    for step in range(4):  # across a second and a day boundary: the key and the date change
        now = when + datetime.timedelta(seconds=step)
        _at(now, monkeypatch)
        for path in PATHS:
            for body in BODIES:
                ours = dict(signer.headers(path, body))
                assert ours == _botocore(creds.get_frozen_credentials(), "eu-west-3", path, body, now,
                                         monkeypatch), (step, path, body[:20])


def test_refreshed_credentials_are_signed_with(monkeypatch: pytest.MonkeyPatch) -> None:
    first = Credentials("AKID1", "secret-1", "token-1")
    creds = AwsCredentials(first)
    signer = SigV4Signer(creds, "us-east-1", ORIGIN, HOST)
    when = datetime.datetime(2026, 12, 7, 12, 0, 0, tzinfo=datetime.UTC)
    _at(when, monkeypatch)
    path = PATHS[0]
    assert dict(signer.headers(path, b"{}")) == _botocore(first, "us-east-1", path, b"{}", when, monkeypatch)
    second = Credentials("AKID2", "secret-2", None)  # what the refresh task swaps in
    creds.frozen = second.get_frozen_credentials()
    ours = dict(signer.headers(path, b"{}"))
    assert "x-amz-security-token" not in ours
    assert ours == _botocore(second, "us-east-1", path, b"{}", when, monkeypatch)


def test_the_signing_key_is_derived_once_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    creds = AwsCredentials(Credentials("AKID", "secret"))
    signer = SigV4Signer(creds, "us-east-1", ORIGIN, HOST)
    derived: list[str] = []
    sign = aws._CachedSigV4._sign

    def counting(self: Any, key: bytes, msg: str, hex: bool = False) -> Any:
        derived.append(msg)
        return sign(self, key, msg, hex)

    monkeypatch.setattr(aws._CachedSigV4, "_sign", counting)
    day = datetime.datetime(2026, 12, 7, 8, 0, 0, tzinfo=datetime.UTC)
    for i in range(100):
        _at(day + datetime.timedelta(seconds=i), monkeypatch)
        signer.headers(PATHS[i % len(PATHS)], b"{}")
    assert derived == ["20261207", "us-east-1", "bedrock", "aws4_request"]
    _at(day + datetime.timedelta(days=1), monkeypatch)
    signer.headers(PATHS[0], b"{}")
    assert derived[4:] == ["20261208", "us-east-1", "bedrock", "aws4_request"]
