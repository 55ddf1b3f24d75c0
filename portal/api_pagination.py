"""One page shape for every list in the partner REST API."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination


class Pagination(LimitOffsetPagination):
    """`?limit=&offset=`; `{count, next, previous, results}`, 50 a page, at most 500."""

    default_limit = 50
    max_limit = 500
