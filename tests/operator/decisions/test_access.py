"""What a job may reach: Secrets it names, endpoints it dials, sandbox switches (pure)."""

from __future__ import annotations

from kuberl.operator.api import AgentEnv
from kuberl.operator.decisions.access import (
    AccessPolicy,
    endpoint_errors,
    redact_url,
    sandbox_errors,
    secret_errors,
    secret_needs,
)
from kuberl.operator.decisions.references import Lookups, semantic_errors
from tests.support.objects import job


def credentialed(**env):
    j = job()
    spec = j.spec.model_copy(deep=True)
    j = j.model_validate(
        {
            "metadata": j.metadata,
            "spec": {
                **spec.to_wire(),
                "buffer": {**spec.buffer.to_wire(), "credentialsSecret": {"name": "nats-creds"}},
                "weightStore": {**spec.weight_store.to_wire(), "credentialsSecret": {"name": "s3-creds"}},
                "trainer": {
                    **spec.trainer.to_wire(),
                    "env": [
                        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
                        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "maybe", "key": "k", "optional": True}}},
                    ],
                },
            },
        }
    )
    return j


def test_every_secret_a_job_names_is_needed_with_its_keys():
    needs = {n.field: (n.name, n.keys, n.nats) for n in secret_needs(credentialed())}
    assert needs == {
        "spec.buffer.credentialsSecret.name": ("nats-creds", (), True),
        "spec.weightStore.credentialsSecret.name": ("s3-creds", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), False),
        "spec.trainer.env[0].valueFrom.secretKeyRef": ("hf", ("token",), False),
    }  # the optional reference is not a need


def test_missing_secrets_and_keys_are_named_with_the_fix():
    j = credentialed()
    errors = dict(secret_errors(j, {}))
    assert (
        "Secret 'nats-creds' does not exist in namespace team-a; create it with `creds`"
        in errors["spec.buffer.credentialsSecret.name"]
    )
    assert "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in errors["spec.weightStore.credentialsSecret.name"]
    present = {"nats-creds": frozenset({"user"}), "s3-creds": frozenset({"AWS_ACCESS_KEY_ID"}),
               "hf": frozenset({"token"})}
    errors = dict(secret_errors(j, present))
    assert (
        "holds none of" in errors["spec.buffer.credentialsSecret.name"]
        and "(it has: user)" in errors["spec.buffer.credentialsSecret.name"]
    )
    assert errors["spec.weightStore.credentialsSecret.name"] == "Secret 's3-creds' has no key AWS_SECRET_ACCESS_KEY"
    complete = {"nats-creds": frozenset({"user", "password"}),
                "s3-creds": frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}),
                "hf": frozenset({"token"})}
    assert secret_errors(j, complete) == []
    assert semantic_errors(j, Lookups({"tiny-arithmetic-rollout": None}, {}, secrets=complete)) == []
    assert [f for f, _ in semantic_errors(j, Lookups({"tiny-arithmetic-rollout": None}, {}))] == [
        "spec.buffer.credentialsSecret.name", "spec.weightStore.credentialsSecret.name",
        "spec.trainer.env[0].valueFrom.secretKeyRef"]


def test_the_endpoint_allowlist_confines_what_the_operator_and_pods_dial():
    j = job()
    assert endpoint_errors(j, AccessPolicy()) == []
    assert endpoint_errors(j, AccessPolicy(endpoint_allowlist=("*.kuberl-system", "minio.*"))) == []
    errors = dict(endpoint_errors(j, AccessPolicy(endpoint_allowlist=("nats.example.com",))))
    assert list(errors) == ["spec.buffer.url", "spec.weightStore.endpoint"]
    assert (
        "host 'kuberl-nats.kuberl-system' is not among the endpoints this installation allows (nats.example.com)"
        in errors["spec.buffer.url"]
    )
    assert "security.endpointAllowlist" in errors["spec.buffer.url"]


def test_switching_the_sandbox_off_needs_the_installations_consent():
    env = AgentEnv.model_validate({"metadata": {"name": "e"},
                                   "spec": {"sandbox": {"denyEgress": False, "runAsNonRoot": False}}})
    errors = sandbox_errors(env.spec, "spec", AccessPolicy())
    assert [f for f, _ in errors] == ["spec.sandbox.denyEgress", "spec.sandbox.runAsNonRoot"]
    assert "security.allowSandboxOptOut" in errors[0][1]
    assert sandbox_errors(env.spec, "spec", AccessPolicy(allow_sandbox_opt_out=True)) == []
    assert sandbox_errors(AgentEnv.model_validate({"metadata": {"name": "e"}}).spec, "spec", AccessPolicy()) == []


def test_urls_lose_their_credentials_before_any_message():
    assert redact_url("nats://user:pw@nats.svc:4222") == "nats://nats.svc:4222"
    assert redact_url("https://AKIA:secret@s3.example.com/path") == "https://s3.example.com/path"
    assert redact_url("nats://nats.svc:4222") == "nats://nats.svc:4222"


def test_secrets_that_are_not_read_are_not_judged():
    # rbac.readJobSecrets=false: the operator cannot know, so it does not claim they are missing.
    assert semantic_errors(credentialed(), Lookups({"tiny-arithmetic-rollout": None}, {}, secrets=None)) == []
