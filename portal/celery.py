"""The Celery application. Tasks are declared with portal.tasks.portal_task."""

from __future__ import annotations

import logging.config
import os

from celery import Celery
from celery.signals import setup_logging, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _prepare_filesystem_broker(sender: Celery, **kwargs: object) -> None:
    # The embedded broker's folders must exist before a worker or producer polls them.
    if str(sender.conf.broker_url).startswith("filesystem://"):
        options = sender.conf.broker_transport_options or {}
        for key in ("data_folder_in", "data_folder_out", "processed_folder"):
            if options.get(key):
                os.makedirs(options[key], mode=0o700, exist_ok=True)


@setup_logging.connect
def _keep_django_logging(**kwargs: object) -> None:
    # Settings' LOGGING (applied when Django is set up) is the worker's too: left to
    # itself, Celery gives its task logger a handler of its own, which redacts nothing.
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@worker_init.connect
def _keep_freed_memory(**kwargs: object) -> None:
    # Tasks read and decrypt objects like a web worker (see portal.allocator); pool
    # processes forked after this inherit the settings.
    from portal.allocator import keep_freed_memory

    keep_freed_memory()
