"""The kopf controllers, one module per kind; importing this package registers their handlers.

kopf keys its progress annotations on the handler function names (`rljob_created`, …),
so those names are part of the stored state of every object: never rename them.
"""

from kuberl.operator.controllers import agentenv, rljob, rolloutpool, startup, sweeper, watched  # noqa: F401  (registers the handlers)
from kuberl.operator.controllers.runtime import RT  # noqa: F401
