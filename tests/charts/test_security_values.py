"""The chart's security values reach the operator's settings unchanged."""

from __future__ import annotations

from kuberl.operator.settings import OperatorSettings
from tests.charts.test_chart import by_kind, helm, render  # noqa: F401  (helm: the fixture)


def operator_env(docs: list[dict]) -> dict[str, str]:
    deployment = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("operator"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_allowlist_and_sandbox_policy_become_operator_settings(helm, monkeypatch):  # noqa: F811
    default = operator_env(render(helm))
    for key, value in default.items():
        monkeypatch.setenv(key, value)
    settings = OperatorSettings.from_env()
    assert settings.endpoint_allowlist == () and settings.allow_sandbox_opt_out is False

    env = operator_env(render(helm, "--set", "security.endpointAllowlist={*.kuberl-system.svc,s3.example.com}",
                              "--set", "security.allowSandboxOptOut=true"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = OperatorSettings.from_env()
    assert settings.endpoint_allowlist == ("*.kuberl-system.svc", "s3.example.com")
    assert settings.allow_sandbox_opt_out is True


def test_the_operator_gets_the_stacks_nats_keys_and_no_s3_keys(helm):  # noqa: F811
    from kuberl.workloads.config import NATS_CREDENTIALS_DIR_ENV, NATS_CREDENTIALS_MOUNT
    from tests.charts.test_chart import STACK_VALUES

    docs = render(helm, "-f", str(STACK_VALUES), "--set", "rbac.readJobSecrets=false")
    deployment = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("operator"))
    pod = deployment["spec"]["template"]["spec"]
    env = operator_env(docs)
    assert env[NATS_CREDENTIALS_DIR_ENV] == NATS_CREDENTIALS_MOUNT and env["KUBERL_READ_JOB_SECRETS"] == "false"
    volume = next(v for v in pod["volumes"] if v["name"] == "nats-credentials")
    assert volume["secret"]["secretName"] == "kuberl-stack-credentials"
    assert [i["key"] for i in volume["secret"]["items"]] == ["user", "password"]  # not the S3 keys
    assert {"name": "nats-credentials", "mountPath": NATS_CREDENTIALS_MOUNT, "readOnly": True} in pod["containers"][0]["volumeMounts"]
    # Without a stack and without operator.natsCredentialsSecret the operator has no identity of its own.
    assert NATS_CREDENTIALS_DIR_ENV not in operator_env(render(helm))
