"""Credentials never reach records, logs or errors: redaction by key name and by value."""

from __future__ import annotations

import json

from vidbatch.storage import normalize_uri, public_uri, redact, scrub

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
