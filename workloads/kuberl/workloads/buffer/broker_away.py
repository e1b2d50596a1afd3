"""The NATS errors that mean the broker is away for now, not that the call was wrong.

A nats-server restarting, a client reconnecting, JetStream recovering its streams: for the
seconds that lasts, calls fail with these, and the same call made again later succeeds.
A trainer or rollout agent that let them escape would crash and be restarted for an outage
it only had to wait out (the broker drills restart NATS under a running job). A connection
closed for good (ConnectionClosedError) is not among them: waiting cannot mend it, and a
restarted process connects afresh.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors

BROKER_AWAY: tuple[type[BaseException], ...] = (
    asyncio.TimeoutError,  # the builtin TimeoutError on Python >= 3.11; nats' TimeoutError subclasses it
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,  # what was published while reconnecting outgrew the buffer
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
