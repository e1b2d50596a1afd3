"""Stop on SIGTERM, as a pod's main process must.

In a container the workload is PID 1 of its pid namespace, and the kernel drops every
signal PID 1 installed no handler for. Python installs none for SIGTERM, so without this a
deleted pod's trainer kept training through the whole grace period until the kubelet's
SIGKILL (seen on the real node: ~30 more steps, and a checkpoint the gang restart then
skipped over). The exit code is the shell's convention for "ended by SIGTERM".
"""

from __future__ import annotations

import signal

EXIT_ON_SIGTERM = 128 + signal.SIGTERM  # 143


def exit_on_sigterm(log) -> None:
    """Raise SystemExit(143) in the main thread on SIGTERM: `finally` blocks and
    asyncio.run's task cancellation run, then the process exits."""

    def stop(signum, _frame):
        log.warning("stopping on SIGTERM", exit_code=EXIT_ON_SIGTERM)
        raise SystemExit(EXIT_ON_SIGTERM)

    signal.signal(signal.SIGTERM, stop)
