"""Request lines keep no patient data: query string values go, names of parameters stay."""

from __future__ import annotations

import base64
import io
import logging

import boto3
import pytest
from moto import mock_aws

from imaging.keys import AwsKmsKeyProvider
from portal.logredact import RedactingFormatter, RedactQuotedValues, RedactShareTokens


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


@pytest.fixture
def console_log():
    """Everything the console handler settings configure prints, formatter included."""
    (handler,) = [
        h for h in logging.getLogger().handlers if isinstance(h.formatter, RedactingFormatter)
    ]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    yield stream
    handler.setStream(previous)


def test_a_search_value_with_an_apostrophe_is_redacted_whole(request_log):
    url = "/dicomweb/studies?PatientName=O'Brien^Jane&PatientBirthDate=19700101"

    logging.getLogger("django.server").info('"GET %s HTTP/1.1" %s %s', url, 200, 512)

    line = request_log.getvalue()
    assert "Brien" not in line and "Jane" not in line and "1970" not in line


@pytest.mark.parametrize(
    "value",
    [
        "O'Brien^Jane",  # quoted as is
        'O\'Brien "Jr"^Jane',  # repr() of a value holding both quotes
        "Doe^Jane'",  # a quote at the value's end
    ],
)
def test_a_value_pydicom_quotes_is_redacted_whole_whatever_quotes_it_holds(value):
    record = logging.LogRecord("pydicom", logging.WARNING, __file__, 1, "", None, None)
    record.msg = "Invalid value for VR PN: %r, and again: '%s' in (0010,0010)"
    record.args = (value, value)

    RedactQuotedValues().filter(record)

    message = record.getMessage()
    assert "Brien" not in message and "Jane" not in message and "Jr" not in message
    assert message.startswith("Invalid value for VR PN: ")


# Values an exception's message can quote (a unique key's DETAIL, a URL), kept off the
# lines a traceback shows.
URL_IN_ERROR = "/s/AbCdEfGhIjKlMnOpQrStUv?PatientName=" + "Doe"
KEY_IN_ERROR = "(issuer, patient_id)=(, MRN-" + "0042)"


def _raise_with_values() -> None:
    try:
        raise LookupError(URL_IN_ERROR)
    except LookupError as exc:
        raise ValueError(KEY_IN_ERROR) from exc


def test_a_traceback_names_its_exceptions_and_frames_but_not_their_messages(console_log):
    try:
        _raise_with_values()
    except ValueError:
        logging.getLogger("portal.tests").exception("Storing failed for instance %s", "42")

    text = console_log.getvalue()
    assert "MRN-0042" not in text and "AbCdEfGhIjKlMnOpQrStUv" not in text and "Doe" not in text
    assert "Storing failed for instance 42" in text
    assert "builtins.ValueError (message not logged)" in text
    assert "builtins.LookupError (message not logged)" in text
    assert "in _raise_with_values" in text  # where to look


@mock_aws
def test_tenant_keys_never_reach_the_log_even_at_debug(console_log):
    root = logging.getLogger()
    level = root.level
    client = boto3.client("kms", region_name="eu-central-1")
    provider = AwsKmsKeyProvider(client.create_key()["KeyMetadata"]["KeyId"], client=client)
    secret = bytes(range(32))
    root.setLevel(logging.DEBUG)  # an operator troubleshooting with LOG_LEVEL=DEBUG
    try:
        provider.unwrap(provider.wrap(secret, context=b"tenant-key|A|1"), context=b"tenant-key|A|1")
    finally:
        root.setLevel(level)

    text = console_log.getvalue()
    assert base64.b64encode(secret).decode()[:16] not in text
    assert secret.hex() not in text


def test_the_workers_task_logger_writes_through_the_redacting_handler():
    from celery.app.log import Logging

    from portal.celery import app

    Logging._setup = False  # as a worker starting
    app.log.setup_logging_subsystem(loglevel="INFO")

    writing = [
        h for h in _handlers_reached("celery.task") if not isinstance(h, logging.NullHandler)
    ]
    assert writing
    assert all(isinstance(h.formatter, RedactingFormatter) for h in writing)
