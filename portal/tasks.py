"""The project's task decorator and the platform's periodic jobs.

Every task goes through `portal_task` so that the reliability settings are uniform:
late acknowledgement (a worker killed mid-task hands the message back), bounded
retries, and keyword-only arguments that carry ids, never PHI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import shared_task  # noqa: TID251  (this is the wrapper)
from django.db import transaction

logger = logging.getLogger(__name__)


def portal_task(
    *, max_retries: int = 3, queue: str | None = None, **options: Any
) -> Callable[[Callable[..., Any]], Any]:
    """Declare an idempotent, late-acknowledged task that takes ids as keyword arguments."""

    def decorator(func: Callable[..., Any]) -> Any:
        task_options: dict[str, Any] = {
            "acks_late": True,
            "reject_on_worker_lost": True,
            "max_retries": max_retries,
            "retry_backoff": True,
            "retry_jitter": True,
            **options,
        }
        if queue:
            task_options["queue"] = queue
        return shared_task(**task_options)(func)

    return decorator


# A request waits for the broker at most about two connection timeouts after its commit;
# what is lost then is picked up by the recovery jobs.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}


def task_send(*, task: Any, kwargs: dict[str, Any], countdown: float | None = None) -> bool:
    """Send `task` now; False, logged by task name, when the broker cannot take it."""
    try:
        task.apply_async(kwargs=kwargs, countdown=countdown, retry_policy=PUBLISH_RETRY)
    except Exception as exc:  # a best-effort edge: a broker or result store fault of any kind
        logger.error("could not queue %s: %s", task.name, type(exc).__name__)
        return False
    return True


def task_send_on_commit(
    *, task: Any, kwargs: dict[str, Any], countdown: float | None = None
) -> None:
    """Send `task` once the current transaction commits; a broker fault never fails it.

    By then the change is committed and may be acknowledged. An exception raised by an
    on-commit callback reaches the code that committed: an upload would be answered as
    failed though stored, and the ingest's clean-up would remove the objects its
    committed rows name. A message that cannot be sent is logged by task name; where
    its work matters, a periodic job picks it up (thumbnails still pending, emails
    still unsent).
    """

    def send() -> None:
        task_send(task=task, kwargs=kwargs, countdown=countdown)

    # robust: a fault in the send itself (task_send catches the broker's) is logged too.
    transaction.on_commit(send, robust=True)


def broker_check() -> None:
    """Raise unless the broker accepts a connection within a couple of seconds."""
    from portal.celery import app

    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


@portal_task(ignore_result=False)
def ping() -> str:
    """Answer a liveness probe sent through the broker."""
    return "pong"
