"""One rejected field, as offline validation reports it. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One rejected field."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"
