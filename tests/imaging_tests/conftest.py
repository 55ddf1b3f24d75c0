"""Fixtures shared by the imaging tests."""

from __future__ import annotations

import pytest

from imaging import services
from tests.imaging_tests.dicomweb_support import token_for


@pytest.fixture(params=["ahead", "streamed"])
def read_ahead(request, monkeypatch) -> str:
    """Run the test with small objects read ahead on reader threads, then streamed."""
    if request.param == "streamed":
        monkeypatch.setattr(services, "READ_AHEAD_MAX_BYTES", 0)
    return request.param


@pytest.fixture
def read_token(clinic) -> str:
    """A partner's API token that may read the clinic's DICOMweb."""
    return token_for(clinic, "dicomweb:read")


@pytest.fixture
def write_token(clinic) -> str:
    """A partner's API token that may read and store into the clinic's DICOMweb."""
    return token_for(clinic, "dicomweb:read", "dicomweb:write")


@pytest.fixture
def outsider_token(other_clinic) -> str:
    """The same, for another clinic."""
    return token_for(other_clinic, "dicomweb:read", "dicomweb:write")
