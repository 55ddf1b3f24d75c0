"""The ASGI entry point, for a deployment that runs an ASGI server instead of gunicorn."""

import os

import django

from portal.handlers import PortalASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django.setup(set_prefix=False)  # what get_asgi_application() does before its handler
application = PortalASGIHandler()
