from __future__ import annotations

import logging

import pytest

from sendense.common.logging import install_redaction, redact, register_secret


def test_registered_secrets_and_patterns_never_reach_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    install_redaction()
    register_secret("hunter2-vcenter")
    log = logging.getLogger("sendense.test")
    with caplog.at_level(logging.INFO):
        log.info("connecting user=%s password=%s", "admin", "hunter2-vcenter")
        log.info("header Authorization: Bearer abc.def-123")
        log.info('body {"vcenter_password": "s3cr3t!"}')
    text = caplog.text
    assert "hunter2-vcenter" not in text
    assert "abc.def-123" not in text
    assert "s3cr3t!" not in text
    assert "user=admin" in text


def test_redact_leaves_ordinary_text() -> None:
    assert redact("port=10100 job=abc") == "port=10100 job=abc"
