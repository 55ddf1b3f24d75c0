"""Mail sent by tasks: a failure is retried and told by its type alone.

A mail server's refusal quotes the addresses it refused (`SMTPRecipientsRefused`), a
patient's among them. Raised as it is, the text would reach the worker's log on every
retry and the task result backend (Redis); `MailFailed` carries the type only.
"""

from __future__ import annotations

import smtplib
from typing import Any

from django.core.mail import send_mail


class MailFailed(Exception):
    """Sending failed; the message is the error's type, never its text."""


# Options for every task that sends mail: retried on a failure to send, and no result
# stored (nothing reads one, and a failure's result would be stored too).
MAIL_TASK: dict[str, Any] = {
    "max_retries": 5,
    "autoretry_for": (MailFailed,),
    "ignore_result": True,
}


def mail_send(*, subject: str, message: str, recipient_list: list[str]) -> None:
    """Send one plain-text email from DEFAULT_FROM_EMAIL; raise MailFailed if it fails.

    The subject is one line: it carries names a clinic chose (its own, a study's), and a
    line break in one would make Django refuse every such email as a header injection,
    break-glass notices to privacy officers among them.
    """
    subject = " ".join(subject.split())
    try:
        send_mail(subject=subject, message=message, from_email=None, recipient_list=recipient_list)
    except (OSError, smtplib.SMTPException) as exc:
        raise MailFailed(type(exc).__name__) from None
