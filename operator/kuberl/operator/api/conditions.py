"""The condition types and reasons kuberl's resources report in `.status.conditions`: the
words `kubectl wait --for=condition=…`, `kubectl describe` and alerting rules match on,
defined once. Which condition is set when is decided in `decisions.status`."""

from __future__ import annotations

# ---- types --------------------------------------------------------------------------

# An RLJob's, in the order they come true in a healthy job.
CREATED = "Created"
BUFFER_READY = "BufferReady"
TRAINER_READY = "TrainerReady"
ROLLOUT_READY = "RolloutReady"
RUNNING = "Running"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
JOB_CONDITION_TYPES = (CREATED, BUFFER_READY, TRAINER_READY, ROLLOUT_READY, RUNNING, SUSPENDED, SUCCEEDED, FAILED)

# A RolloutPool's and an AgentEnv's one condition.
READY = "Ready"

# ---- reasons ------------------------------------------------------------------------

# The spec: Failed (and Created, while it is invalid), AgentEnv's Ready.
INVALID_SPEC = "InvalidSpec"
SPEC_VALID = "SpecValid"
CHILDREN_CREATED = "ChildrenCreated"
# The lifecycle's ends: Failed and Succeeded.
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
DEADLINE_EXCEEDED = "DeadlineExceeded"
TRAINER_COMPLETED = "TrainerCompleted"
NOT_FAILED = "NotFailed"
NOT_FINISHED = "NotFinished"
# BufferReady (and Created while the streams cannot be made).
BUFFER_UNAVAILABLE = "BufferUnavailable"
BUFFER_AVAILABLE = "BufferAvailable"
# The API server refused a child (422: invalid; 403: admission, e.g. Pod Security).
CHILD_REJECTED = "ChildRejected"
PODS_REJECTED = "PodsRejected"
# TrainerReady, RolloutReady and Ready.
ALL_RANKS_READY = "AllRanksReady"
RANKS_NOT_READY = "RanksNotReady"
COLOCATED = "Colocated"  # the trainer's pods run the engine
ENGINES_READY = "EnginesReady"
NO_ENGINE_READY = "NoEngineReady"
PODS_READY = "PodsReady"
NO_POD_READY = "NoPodReady"
# Running and Suspended (a suspended job's readiness conditions say SUSPENDED too).
JOB_FINISHED = "JobFinished"
TRAINING = "Training"
STARTING = "Starting"
SUSPENDED_BY_USER = "SuspendedByUser"
NOT_SUSPENDED = "NotSuspended"
