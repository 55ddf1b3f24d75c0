"""Request lines keep no patient data: query string values go, names of parameters stay."""

from __future__ import annotations

import io
import logging

import pytest

from portal.logredact import RedactShareTokens


@pytest.fixture
def request_log():
    """What runserver's request lines print, through the handler settings configure."""
    (handler,) = [
        h
        for h in logging.getLogger("django.server").handlers
        if any(isinstance(f, RedactShareTokens) for f in h.filters)
    ]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    yield stream
    handler.setStream(previous)


@pytest.mark.parametrize(
    "url",
    [
        "/dicomweb/studies?PatientName=Doe%5EJane&PatientID=PID-77&limit=5",
        "/api/v1/studies?patient_name=Doe&patient_birth_date=1970-01-01",
        "/t/north/dicomweb/studies?00100010=Doe*",
    ],
)
def test_search_values_never_reach_the_request_log(request_log, url):
    logging.getLogger("django.server").info('"GET %s HTTP/1.1" %s %s', url, 200, 512)

    line = request_log.getvalue()
    assert "Doe" not in line and "PID-77" not in line and "1970" not in line
    assert "?" in line and "=[redacted]" in line
    assert url.split("?")[0] in line  # the path stays, to say what was asked


def test_a_question_in_a_message_is_left_alone(request_log):
    logging.getLogger("django.server").info("Is the broker up? Yes")

    assert "Is the broker up? Yes" in request_log.getvalue()


def test_a_password_reset_token_never_reaches_the_request_log(request_log):
    token = "cq8x1z-4d7b0e6f1a2c3b4d5e6f7a8b9c0d1e2f"

    logging.getLogger("django.server").info(
        '"GET /accounts/password-reset/MTIz/%s/ HTTP/1.1" 302 0', token
    )
    logging.getLogger("django.server").info(
        '"GET /accounts/password-reset/MTIz/set-password/ HTTP/1.1" 200 512'
    )

    lines = request_log.getvalue().splitlines()
    assert token not in request_log.getvalue()
    assert "/accounts/password-reset/MTIz/[redacted]/" in lines[0]
    assert "/accounts/password-reset/MTIz/set-password/" in lines[1]


def _handlers_reached(name: str) -> list[logging.Handler]:
    """The handlers a record logged to `name` reaches, but pytest's own."""
    handlers, logger = [], logging.getLogger(name)
    while logger is not None:
        handlers += [h for h in logger.handlers if not type(h).__module__.startswith("_pytest")]
        logger = logger.parent if logger.propagate else None
    return handlers


@pytest.mark.parametrize(
    "name", ["django.request", "django.security.csrf", "django.db.backends", "django.template"]
)
def test_every_handler_of_djangos_loggers_redacts(name):
    handlers = _handlers_reached(name)

    assert handlers
    assert all(any(isinstance(f, RedactShareTokens) for f in h.filters) for h in handlers)
