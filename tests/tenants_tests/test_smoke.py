import pytest


@pytest.mark.django_db
def test_worklist_for_radiologist(radiologist, client_for):
    response = client_for(radiologist).get("/t/north/")

    assert response.status_code == 200
    assert b"Worklist" in response.content
