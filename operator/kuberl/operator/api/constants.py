"""Every key the operator puts on objects, defined once: group/version, labels, annotations, ports.

Everything that reads or writes these (children, controllers, tests, the chart's test)
imports them from here; a second spelling of a key is a bug waiting to happen.
"""

from __future__ import annotations

GROUP = "kuberl.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# The value of spec.managedBy that means "this operator"; any other value is left alone.
MANAGED_BY = "kuberl.io/operator"

# kopf's own bookkeeping, under our prefix: our status schemas are structural, so kopf's
# default status.kopf field would be pruned by the API server.
KOPF_ANNOTATION_PREFIX = "kuberl.io"
KOPF_DIFFBASE_KEY = "last-handled-configuration"
# kopf writes it once an object's create (or update) handlers have all succeeded.
KOPF_DIFFBASE_ANNOTATION = f"{KOPF_ANNOTATION_PREFIX}/{KOPF_DIFFBASE_KEY}"
FINALIZER = "kuberl.io/finalizer"

# Label keys. app.kubernetes.io/* for tools that know them; kuberl.io/* for our selectors.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_LABEL_VALUE = "kuberl-operator"  # on every child: the operator's watches keep only these
LABEL_JOB = "kuberl.io/job"
LABEL_ROLE = "kuberl.io/role"
LABEL_POOL = "kuberl.io/rollout-pool"
LABEL_ENV = "kuberl.io/agent-env"
LABEL_REPLICA_INDEX = "kuberl.io/replica-index"
LABEL_GANG_GENERATION = "kuberl.io/gang-generation"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_POD_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"

# Annotations.
POD_GROUP_SIZE_ANNOTATION = "kuberl.io/pod-group-size"
# Set by an owning RLJob on its pool and envs while it is suspended or finished: the
# Deployment then runs zero pods, and the user's replica count is left untouched.
PAUSED_ANNOTATION = "kuberl.io/paused"
# On a job's own RolloutPool: its template's replica count as last carried over. A pool whose
# replicas differ from it (autoscaling off) was scaled by hand, which the job undoes, saying so.
TEMPLATE_REPLICAS_ANNOTATION = "kuberl.io/template-replicas"
# The hash of a Deployment's pod template as last written: a changed hash replaces the template.
SPEC_HASH_ANNOTATION = "kuberl.io/template-hash"
# On children the operator creates whole (ConfigMap, Services, NetworkPolicies): the digest of the
# manifest last asserted, so a round (or a standby taking over) skips a child that still carries it.
MANIFEST_HASH_ANNOTATION = "kuberl.io/manifest-hash"

# Values of the role label.
ROLE_TRAINER = "trainer"
ROLE_ROLLOUT = "rollout"
ROLE_AGENTENV = "agentenv"

# Ports the pods the operator builds listen on.
RENDEZVOUS_PORT = 29500
ENGINE_PORT = 30000
WORKLOAD_METRICS_PORT = 9400
# A rollout agent serves the weight versions it downloaded to the other agents of its node (weightFetch perNode).
WEIGHT_RELAY_PORT = 9410
