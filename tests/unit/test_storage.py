"""Credentials never reach records, logs or errors; which storage errors are worth retrying."""

from __future__ import annotations

import json

import pytest

from vidbatch.storage import normalize_uri, public_uri, redact, scrub, transient

OPTIONS = {
    "connection_string": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=S3CRETKEYVALUE==",
    "headers": {"Authorization": "Bearer tok-123456789"},
    "endpoint_url": "http://admin:hunter2pass@minio.local:9000",
    "client_kwargs": {"region_name": "eu-west-1"},
    "anon": False,
}
SECRETS = ("S3CRETKEYVALUE", "tok-123456789", "hunter2pass")


def test_redact_hides_secret_values_by_key_and_inside_urls():
    text = json.dumps(redact(OPTIONS))
    assert not [s for s in SECRETS if s in text], text
    redacted = redact(OPTIONS)
    assert redacted["client_kwargs"] == {"region_name": "eu-west-1"} and redacted["anon"] is False
    assert redacted["endpoint_url"] == "http://***@minio.local:9000"


def test_scrub_removes_secret_values_from_any_message():
    message = (
        "ClientError: could not reach http://admin:hunter2pass@minio.local:9000 with "
        "AccountKey=S3CRETKEYVALUE== and Authorization: Bearer tok-123456789"
    )
    cleaned = scrub(message, OPTIONS)
    assert not [s for s in SECRETS if s in cleaned], cleaned
    assert "minio.local:9000" in cleaned


def test_uri_spellings_and_public_form():
    assert normalize_uri("s3://b//a/./x.mp4") == "s3://b/a/x.mp4"
    assert normalize_uri("file:///tmp//v/../x.mp4") == "/tmp/x.mp4"
    assert public_uri("s3://b/a?b.mp4") == "s3://b/a?b.mp4"  # a key may hold "?"
    assert public_uri("https://u:p@h/x.mp4?sig=1&se=2&sv=3&sp=r&id=9") == "https://h/x.mp4?id=9"


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        # What delta-rs raised in CI when a 500 outlasted object_store's own retries.
        (
            "Generic DeltaTable error: Parquet error: Failed to fetch metadata for file "
            "idx/runs/part-0.parquet: Object Store error: Generic S3 error: Error performing "
            "GET http://127.0.0.1:1/out/idx/runs/part-0.parquet in 1.2s, after 4 retries, "
            "max_retries: 4, retry_timeout: 60s - Server returned non-2xx status code: "
            "500 Internal Server Error: <Error><Code>InternalError</Code></Error>",
            True,
        ),
        ("Object Store error: Generic S3 error: error sending request for url (http://x/)", True),
        ("Object Store error: Generic S3 error: Server returned non-2xx status code: 403", False),
        ("Generic DeltaTable error: Schema error: no field named 'x'", False),
    ],
)
def test_delta_rs_object_store_failures_are_retried_and_nothing_else(error, retry):
    from deltalake.exceptions import CommitFailedError, DeltaError

    assert transient(DeltaError(error)) is retry
    assert not transient(CommitFailedError(error))  # a concurrent commit is not a storage fault
