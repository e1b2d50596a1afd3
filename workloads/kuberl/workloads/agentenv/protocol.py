"""What the kuberl-episode-v1 wire carries, as pure functions: request bodies and the endpoint.

The server's handlers stay thin: they read bytes, and these functions decide whether the
bytes are a valid request (naming the field that is not) and which address the server
advertises for the episodes it owns. The protocol itself is described in
:mod:`kuberl.workloads.agentenv.server`.
"""

from __future__ import annotations

import ipaddress
import json
import math
from urllib.parse import urlparse

MiB = 1024 * 1024
MAX_BODY_BYTES = 1 * MiB  # prompts and actions are text; a megabyte is far beyond either
# A number literal's length is checked before it is converted: int() of a long literal is
# quadratic (Python stops at 4,300 digits with a ValueError, or never where that limit is
# lifted). Answers sent as numbers are a dataset's; longer ones can travel as strings.
MAX_NUMBER_CHARS = 1000


class BadRequest(ValueError):
    """A request body the protocol does not accept; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def answer(self) -> dict:
        return {"error": str(self), "field": self.field}


def _literal(text: str) -> str:
    return text if len(text) <= 20 else f"{text[:10]}…({len(text)} characters)"


def _short_number(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadRequest("body", f"the number {_literal(text)} is longer than {MAX_NUMBER_CHARS} characters")
    return text


def _int(text: str) -> int:
    return int(_short_number(text))


def _float(text: str) -> float:
    value = float(_short_number(text))
    if not math.isfinite(value):  # 1e400 parses as inf, which is no answer to anything
        raise BadRequest("body", f"the number {_literal(text)} is out of range")
    return value


def _constant(text: str) -> None:
    raise BadRequest("body", f"{text} is not JSON (numbers must be finite)")


def _object(raw: bytes) -> dict:
    try:
        body = json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except BadRequest:
        raise
    except RecursionError:  # json's scanner recurses once per level: [[[[… a few KiB deep is enough
        raise BadRequest("body", "the body is nested too deeply") from None
    except ValueError:  # UnicodeDecodeError among them
        raise BadRequest("body", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body", f"the body must be a JSON object, not {type(body).__name__}")
    return body


def _string(body: dict, name: str, *, numbers: bool = False) -> str:
    if name not in body:
        raise BadRequest(name, f"missing field {name!r}")
    value = body[name]
    # bool is an int to Python, but `true` is no answer to an arithmetic problem.
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BadRequest(name, f"field {name!r} must be a string, not {type(value).__name__}")
    return value


def parse_reset(raw: bytes) -> tuple[str, str]:
    """(prompt, answer) of a POST /episodes body. Answers may be numbers (JSONL datasets)."""
    body = _object(raw)
    return _string(body, "prompt"), _string(body, "answer", numbers=True)


def parse_step(raw: bytes) -> str:
    """The action of a POST /episodes/{id}/step body."""
    return _string(_object(raw), "action")


def advertised_endpoint(advertise_url: str | None, pod_ip: str | None, port: int) -> str | None:
    """The base URL this server gives in reset answers, so steps reach the pod owning the episode.

    ``--advertise-url`` wins; else the pod IP (the downward API's status.podIP, as env POD_IP)
    with the serving port; None when neither is known, and reset answers carry no endpoint
    (one replica, or a client that must stay on the Service).
    """
    if advertise_url:
        url = urlparse(advertise_url)
        if url.scheme not in ("http", "https") or not url.netloc or url.query or url.fragment:
            raise ValueError(f"--advertise-url {advertise_url!r} must be an http(s) base URL such as http://10.0.0.7:8080")
        return advertise_url.rstrip("/")
    if pod_ip:
        ip = ipaddress.ip_address(pod_ip.strip())  # a typo'd env fails the start, not every step
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"http://{host}:{port}"
    return None
