"""How a process authenticates to NATS: from the job's credentials Secret, never from the config.

The Secret (spec.buffer.credentialsSecret) holds one of three forms, tried in this order:
`creds` (a NATS credentials file: user JWT + NKey seed, decentralised auth), `user` and
`password`, or `token`. Pods get it mounted as a directory of files (one per key,
`NATS_CREDENTIALS_DIR_ENV` names it); the operator reads the same keys from the API. Both
turn them into nats-py connect options with `auth_options`, so there is one reading of the
Secret's shape.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nats.aio.client import RawCredentials

from kuberl.workloads.config import NATS_CREDENTIALS_DIR_ENV

NATS_SECRET_KEYS = ("creds", "user", "password", "token")


class CredentialsError(ValueError):
    """The Secret does not hold a usable form."""


def auth_options(values: Mapping[str, str]) -> dict[str, Any]:
    """nats-py `connect` keyword arguments for a Secret's keys. Pure."""
    creds = (values.get("creds") or "").strip()
    if creds:
        return {"user_credentials": RawCredentials(creds)}
    user, password = values.get("user"), values.get("password")
    if user and password:
        return {"user": user.strip("\n"), "password": password.strip("\n")}
    if user or password:
        raise CredentialsError("the NATS credentials Secret has only one of `user` and `password`; give both")
    token = (values.get("token") or "").strip()
    if token:
        return {"token": token}
    raise CredentialsError("the NATS credentials Secret has none of the keys `creds`, `user`+`password` or `token`")


def read_directory(directory: str | os.PathLike[str]) -> dict[str, str]:
    """The Secret's keys as a mounted volume shows them (one file per key)."""
    root = Path(directory)
    return {k: (root / k).read_text() for k in NATS_SECRET_KEYS if (root / k).is_file()}


def process_auth_options() -> dict[str, Any]:
    """This process's NATS credentials: the mounted Secret when the operator mounted one, else none."""
    directory = os.environ.get(NATS_CREDENTIALS_DIR_ENV)
    if not directory:
        return {}
    try:
        return auth_options(read_directory(directory))
    except CredentialsError as e:
        raise CredentialsError(f"{e} (mounted at {directory})") from None
