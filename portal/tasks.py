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


@portal_task()
def ping() -> str:
    """Answer a liveness probe sent through the broker."""
    return "pong"
