"""Bounds on the calls readiness probes make to AWS (S3 buckets, KMS).

botocore's defaults (60 s to connect, 60 s to read, five attempts) would hold a probe,
and the web thread serving it, for minutes on a stalled endpoint: a probe answers
"unavailable" within seconds instead, and tries once.
"""

from __future__ import annotations

from botocore.config import Config

PROBE_CLIENT_CONFIG = Config(
    connect_timeout=2, read_timeout=3, retries={"total_max_attempts": 1, "mode": "standard"}
)
