"""Riding out an S3 outage: retry what failed for a transient reason, with backoff, for a long window.

The S3 client retries a request a few times within seconds (`weights.s3.s3_client`); a store that
is down for a minute (a restart, a network partition) outlasts that. The trainer then waits,
retrying, rather than crash into a restart loop that needs the same store to resume from:
a weight version stays invisible until its manifest lands (written last), and a checkpoint
until ``latest.json`` names it, so a retried upload never exposes a partial one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from kuberl.workloads.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

# How long an operation keeps retrying through an outage before it gives up (and the
# process exits for its restart policy to decide).
OUTAGE_WINDOW_S = float(os.environ.get("KUBERL_S3_OUTAGE_WINDOW_S", "900"))
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "503",
                    "500"}


def is_transient(e: BaseException) -> bool:
    """Whether ``e`` says the store is unreachable or overloaded (worth waiting for), not that
    the request is wrong (a missing key, denied access, a bad checksum: retrying cannot help)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return err.get("Code") in _TRANSIENT_CODES or status >= 500
    if isinstance(e, S3UploadFailedError):
        # boto3 folds the cause into the message: a connection failure or a 5xx is transient.
        text = str(e)
        return not any(code in text for code in ("AccessDenied", "NoSuchBucket", "InvalidAccessKeyId",
                                                 "SignatureDoesNotMatch"))
    return isinstance(e, (BotoCoreError, ConnectionError, TimeoutError))


def through_outage(operation: Callable[[], T], what: str, window_s: float | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> T:
    """``operation()``, retried with exponential backoff (0.5 s … 15 s) while it fails transiently,
    for at most ``window_s`` (default ``KUBERL_S3_OUTAGE_WINDOW_S``, 900 s)."""
    window = OUTAGE_WINDOW_S if window_s is None else window_s
    deadline = time.monotonic() + window
    delay, attempt = 0.5, 0
    while True:
        try:
            result = operation()
        except Exception as e:
            attempt += 1
            if not is_transient(e) or time.monotonic() + delay > deadline:
                raise
            log.warning("S3 unavailable; retrying", what=what, attempt=attempt, retry_in_s=delay, error=str(e)[:200])
            sleep(delay)
            delay = min(delay * 2, 15.0)
            continue
        if attempt:
            log.info("S3 back", what=what, attempts=attempt + 1)
        return result
