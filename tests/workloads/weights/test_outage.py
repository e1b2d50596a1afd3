"""`weights.outage.through_outage`: transient S3 failures are waited out, others raise at once."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from kuberl.workloads.weights.outage import is_transient, through_outage


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def test_transient_failures_are_retried_with_growing_delays_until_the_store_answers():
    failures = [EndpointConnectionError(endpoint_url="http://s3"), client_error("SlowDown", 503),
                client_error("InternalError", 500)]
    slept: list[float] = []

    def operation() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert through_outage(operation, "test", window_s=60, sleep=slept.append) == "done"
    assert slept == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("error",
                         [client_error("AccessDenied", 403), client_error("NoSuchKey", 404), ValueError("bad")])
def test_a_request_that_is_wrong_raises_at_once(error):
    calls = []

    def operation():
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        through_outage(operation, "test", window_s=60, sleep=lambda s: None)
    assert len(calls) == 1 and not is_transient(error)


def test_the_window_bounds_the_wait():
    slept: list[float] = []

    def operation():
        raise EndpointConnectionError(endpoint_url="http://s3")

    with pytest.raises(EndpointConnectionError):
        through_outage(operation, "test", window_s=0.2, sleep=slept.append)
    assert slept == []  # the first backoff (0.5 s) would already pass the window
