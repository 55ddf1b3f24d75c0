"""Behind the portal's own proxies, each client is known by its own address: throttles
count it alone and audit events name it; a forged X-Forwarded-For changes nothing."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import Action, AuditEvent
from tests.helpers import PASSWORD

PROXY = "10.0.0.2"  # the load balancer, the one peer the portal sees


def _sign_in(client: Client, email: str, password: str, forwarded: str):
    return client.post(
        "/accounts/login/",
        {"username": email, "password": password},
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR=forwarded,
    )


@pytest.mark.django_db
def test_one_clients_failures_behind_the_proxy_do_not_lock_out_another(
    clinic, radiologist, settings
):
    settings.TRUSTED_PROXY_COUNT = 1
    settings.SIGNIN_IP_FAILURE_LIMIT = 3
    for n in range(4):  # someone guessing made-up accounts from one address
        _sign_in(Client(), f"nobody{n}@example.org", "guess", "198.51.100.66")

    guesser = _sign_in(Client(), "nobody9@example.org", "guess", "198.51.100.66")
    colleague = _sign_in(Client(), radiologist.email, PASSWORD, "203.0.113.5")

    assert guesser.status_code == 429
    assert colleague.status_code == 302


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("proxies", "forwarded", "recorded"),
    [
        (1, "203.0.113.5", "203.0.113.5"),
        (1, "192.0.2.1, 203.0.113.5", "203.0.113.5"),  # the left one is the client's word
        (2, "192.0.2.1, 203.0.113.5, 10.0.0.1", "203.0.113.5"),
        (2, "203.0.113.5", PROXY),  # fewer hops than proxies: not believed
        (1, "not-an-address", PROXY),
        (0, "203.0.113.5", PROXY),  # no proxy configured: the header is anyone's
    ],
)
def test_the_audited_address_is_the_hop_the_proxies_added(
    clinic, radiologist, settings, proxies, forwarded, recorded
):
    settings.TRUSTED_PROXY_COUNT = proxies

    _sign_in(Client(), radiologist.email, "wrong password", forwarded)

    event = AuditEvent.objects.unscoped(reason="test").filter(action=Action.LOGIN_FAILED).get()
    assert event.actor_ip == recorded
