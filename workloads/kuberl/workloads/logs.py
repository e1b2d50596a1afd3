"""structlog configured once: JSON lines when not on a TTY (pods, CI), readable console otherwise."""

from __future__ import annotations

import logging
import os
import sys

import structlog

_configured = False


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """Configure structlog and stdlib logging for this process; later calls are no-ops.

    ``json`` defaults to "stderr is not a terminal", so pods and CI get JSON and people
    at a terminal get colours. ``KUBERL_LOG_FORMAT=json|console`` and ``KUBERL_LOG_LEVEL``
    override both.
    """
    global _configured
    if _configured:
        return
    level_name = (level or os.environ.get("KUBERL_LOG_LEVEL", "INFO")).upper()
    fmt = os.environ.get("KUBERL_LOG_FORMAT")
    if json is None:
        json = fmt == "json" if fmt else not sys.stderr.isatty()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (kopf, nats, boto) log through stdlib; route them through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                                                        renderer], foreign_pre_chain=shared)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level_name, logging.INFO))
    _configured = True


def get_logger(name: str | None = None, **bound):
    """A structlog logger, configuring logging on first use."""
    configure_logging()
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)
