"""The WSGI entry point (gunicorn: `portal.wsgi:application`)."""

import gc
import os

import django
from django.urls import get_resolver

from portal.allocator import keep_freed_memory
from portal.handlers import PortalWSGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
keep_freed_memory()
django.setup(set_prefix=False)  # what get_wsgi_application() does before its handler
application = PortalWSGIHandler()

# Import every view now, then take the start-up heap (Django, boto3, pydicom, numpy:
# hundreds of thousands of objects that live as long as the process) out of the
# collector's reach. Otherwise each full collection walks all of it, a pause of tens
# of milliseconds that lands on whichever request happens to trigger it.
get_resolver().url_patterns  # noqa: B018 - the import is the point
gc.collect()
gc.freeze()
