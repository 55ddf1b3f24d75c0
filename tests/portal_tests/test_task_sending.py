"""Services send tasks only through `task_send_on_commit`.

A message sent from a service directly either goes before the commit (a worker may find
no row yet) or, from an on-commit callback of its own, raises into the code that
committed when the broker cannot be reached.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.db import transaction

ROOT = Path(__file__).resolve().parents[2]
APPS = ("audit", "imaging", "portal", "sharing", "tenants")


def _direct_sends(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return [
        f"{name}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in {"delay", "apply_async"}
    ]


def test_only_task_modules_and_the_helper_send_directly():
    # Beat tasks run outside any transaction, so task modules may send directly.
    offenders = [
        site
        for app in APPS
        for path in sorted((ROOT / app).rglob("*.py"))
        if path.name != "tasks.py" and "migrations" not in path.parts
        for site in _direct_sends(path)
    ]

    assert offenders == []


def test_the_scan_catches_a_direct_send(tmp_path):
    module = tmp_path / "services.py"
    module.write_text("def f(task):\n    task.delay(x=1)\n    task.apply_async(kwargs={})\n")

    assert _direct_sends(module) == ["services.py:2", "services.py:3"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_send_that_fails_is_logged_by_task_name_and_raises_nothing(caplog):
    from audit.tasks import audit_checkpoints_write
    from portal.celery import app
    from portal.tasks import task_send_on_commit
    from tests.helpers import celery_broker

    app.conf.task_always_eager = False
    try:
        with celery_broker("redis://127.0.0.1:1/0"), transaction.atomic():
            task_send_on_commit(task=audit_checkpoints_write, kwargs={})
    finally:
        app.conf.task_always_eager = True

    assert "could not queue audit.tasks.audit_checkpoints_write: OperationalError" in caplog.text
