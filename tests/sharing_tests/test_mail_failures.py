"""A mail server's refusal is retried, and the addresses it quotes stay out of the
worker's log and the task result store."""

from __future__ import annotations

import logging
import smtplib

import pytest
from django.core.mail.backends.base import BaseEmailBackend

from portal.mail import MailFailed, mail_send
from sharing.models import ShareLink
from sharing.tasks import share_invitation_send
from tests.imaging_tests.helpers import ingest_study, synthetic_ct
from tests.sharing_tests.test_share_links import make_share

ADDRESS = "jane.doe@example.org"


class RefusesRecipients(BaseEmailBackend):
    """A mail server that refuses the recipient, quoting the address (as SMTP does)."""

    def send_messages(self, email_messages):
        refused = {a: (550, b"mailbox unavailable") for m in email_messages for a in m.to}
        raise smtplib.SMTPRecipientsRefused(refused)


@pytest.fixture
def refusing_server(settings):
    settings.EMAIL_BACKEND = "tests.sharing_tests.test_mail_failures.RefusesRecipients"


def test_a_refusal_is_told_by_its_type_alone(refusing_server):
    with pytest.raises(MailFailed) as failed:
        mail_send(subject="s", message="m", recipient_list=[ADDRESS])

    assert str(failed.value) == "SMTPRecipientsRefused"
    assert failed.value.__cause__ is None and failed.value.__suppress_context__


@pytest.mark.django_db
def test_a_share_email_refused_is_retried_without_the_address_in_logs_or_results(
    clinic, radiologist, refusing_server, caplog, django_capture_on_commit_callbacks
):
    study = ingest_study(clinic, synthetic_ct(slices=1, size=16))
    with django_capture_on_commit_callbacks(execute=False):  # the send is run below
        share, _ = make_share(study, radiologist, recipient_email=ADDRESS)

    with caplog.at_level(logging.INFO):
        result = share_invitation_send.apply(kwargs={"share_id": str(share.pk)})

    assert result.failed()
    assert ADDRESS not in f"{result.result!r} {result.traceback}"
    assert ADDRESS not in caplog.text
    share = ShareLink.objects.for_tenant(clinic).get(pk=share.pk)
    assert share.invitation_sent_at is None  # still to be sent: the retry or recovery does
    assert share_invitation_send.ignore_result
