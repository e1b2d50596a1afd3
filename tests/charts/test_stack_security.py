"""The laptop stack (stack.nats, stack.s3) is closed to anyone without its credentials.

The chart is rendered with `helm template`; the rendered nats.conf and s3.json, and the
environment the pod specs resolve from the rendered Secret, run the real nats-server and
SeaweedFS (`weed server`, as the StatefulSet does) on loopback ephemeral ports, one of
each per module. Only what cannot be the same outside a pod is swapped: data directories,
ports, the listen address (and 4.x-only listeners the chart's 3.97 image does not have).

Not testable without a cluster: that `lookup` keeps generated credentials across
`helm upgrade` (under `helm template` lookup returns nothing, so every render generates
new values: tested below), and that a CNI enforces the NetworkPolicies (their selectors
are evaluated here against the pods the operator builds).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import boto3
import nats
import pytest
import yaml
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kuberl.operator.api import AgentEnv
from kuberl.operator.children.agentenv import agent_env_deployment
from kuberl.operator.children.rollout import rollout_deployment
from kuberl.operator.children.trainer import trainer_pod
from kuberl.operator.decisions.access import secret_errors
from kuberl.workloads.buffer.auth import auth_options
from kuberl.workloads.localproc import dies_with_parent, remove_weed_sockets
from kuberl.workloads.config import S3_CREDENTIAL_KEYS
from kuberl.workloads.localproc import find_binary, free_port, http_ok, seaweed_port_pair
from tests.charts.test_chart import CHART, STACK_VALUES, by_kind, helm, render, run_helm  # noqa: F401  (helm: the fixture)
from kuberl.operator.local.servers import LIVE, stop_process, wait_ready
from tests.support.label_selectors import selects
from tests.support.objects import NS, S, example, job, pool

RELEASE_NS = "kuberl-system"
SECRET = "kuberl-stack-credentials"
KEYS = {"user", "password", *S3_CREDENTIAL_KEYS}
# Given through values, so the rendered output (and so this test) is deterministic.
GIVEN = {"user": "kuberl", "password": "Pw7xGm2QvL9rT4kZ8nB3cD6fH1jS5aE0",
         "AWS_ACCESS_KEY_ID": "AKTEST0CHART0KEY001", "AWS_SECRET_ACCESS_KEY": "sEcReT0fThE0cHaRt0tEsT0sUiTe0aBcDeFgHiJk"}
GIVEN_ARGS = ["-f", str(STACK_VALUES),
              "--set", f"stack.credentials.nats.user={GIVEN['user']}",
              "--set", f"stack.credentials.nats.password={GIVEN['password']}",
              "--set", f"stack.credentials.s3.accessKeyId={GIVEN['AWS_ACCESS_KEY_ID']}",
              "--set", f"stack.credentials.s3.secretAccessKey={GIVEN['AWS_SECRET_ACCESS_KEY']}"]
MiB = 1024 * 1024

pytestmark = pytest.mark.servers


# -- reading the rendered objects the way the kubelet does -----------------------------------

def find(docs: list[dict], kind: str, name: str, namespace: str = RELEASE_NS) -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
            and d["metadata"].get("namespace") == namespace]
    assert len(hits) == 1, f"{kind} {namespace}/{name}: {len(hits)} rendered"
    return hits[0]


def secret_data(secret: dict) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


def resolved_env(docs: list[dict], container: dict, pod_name: str) -> dict[str, str]:
    """The container's environment, secretKeyRef and fieldRef resolved against the render."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        source = e["valueFrom"]
        if "fieldRef" in source:
            env[e["name"]] = {"metadata.name": pod_name, "metadata.namespace": RELEASE_NS}[source["fieldRef"]["fieldPath"]]
        else:
            ref = source["secretKeyRef"]
            env[e["name"]] = secret_data(find(docs, "Secret", ref["name"]))[ref["key"]]
    return env


def mounted_file(docs: list[dict], pod: dict, container: dict, path: str) -> str:
    """What the container reads at `path`: a key of the ConfigMap or Secret mounted above it."""
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "configMap" in volume:
            source, data = volume["configMap"], find(docs, "ConfigMap", volume["configMap"]["name"])["data"]
        else:
            source, data = volume["secret"], secret_data(find(docs, "Secret", volume["secret"]["secretName"]))
        rel = path[len(prefix):]
        key = next((i["key"] for i in source.get("items", []) if i["path"] == rel), rel)
        return data[key]
    raise AssertionError(f"nothing is mounted at {path}")


def pod_of(docs: list[dict], kind: str, name: str) -> tuple[dict, dict]:
    pod = find(docs, kind, name)["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


@pytest.fixture(scope="module")
def docs(helm: Path) -> list[dict]:  # noqa: F811
    return render(helm, *GIVEN_ARGS)


# -- NATS: the rendered config on the real server --------------------------------------------

@pytest.fixture(scope="module")
def nats_url(docs: list[dict], tmp_path_factory) -> str:
    pod, c = pod_of(docs, "StatefulSet", "kuberl-nats")
    assert c["args"][0] == "--config", c["args"]
    conf = mounted_file(docs, pod, c, c["args"][1])
    root = tmp_path_factory.mktemp("nats")
    data_mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data")
    # The one path outside the pod: the JetStream store (nats-server refuses store_dir
    # given twice, so it cannot come from the command line).
    conf, n = re.subn(rf"(?m)^(\s*store_dir:\s*){re.escape(data_mount)}\s*$", rf"\g<1>{root / 'js'}", conf)
    assert n == 1, conf
    (root / "nats.conf").write_text(conf)
    port, http = free_port(), free_port()
    # Only what the pod spec gives the container: the Secret's values arrive as environment
    # variables, and nats-server must expand $NATS_USER / $NATS_PASSWORD from them.
    env = {"PATH": os.environ["PATH"], **resolved_env(docs, c, "kuberl-nats-0")}
    log = root / "nats.log"
    with open(log, "ab") as out:
        # Address and ports on the command line, which nats-server lets override the file.
        proc = subprocess.Popen([find_binary("nats-server"), "-c", str(root / "nats.conf"), "-a", "127.0.0.1",
                                 "-p", str(port), "-m", str(http)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=dies_with_parent())
    LIVE.add(proc)
    try:
        wait_ready(lambda: http_ok(f"http://127.0.0.1:{http}/healthz?js-enabled-only=true"), 30, "nats-server", proc, log)
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop_process(proc, sig=signal.SIGKILL)


async def _quiet(_e):  # nats-py logs every refused attempt otherwise
    pass


async def connect(url: str, **auth):
    return await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
                              error_cb=_quiet, **auth)


async def test_nats_refuses_connections_without_the_secrets_password(nats_url: str):
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect(nats_url)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect(nats_url, user=GIVEN["user"], password=GIVEN["password"][:-1] + "x")


async def test_the_secrets_user_and_password_connect_and_carry_8_mib(nats_url: str):
    # The workloads connect with auth_options(the mounted Secret): the same keys, the same code.
    nc = await connect(nats_url, **auth_options({"user": GIVEN["user"], "password": GIVEN["password"]}))
    try:
        assert nc.max_payload == 8 * MiB
        sub = await nc.subscribe("kuberl.probe")
        body = os.urandom(6 * MiB)
        await nc.publish("kuberl.probe", body)
        msg = await sub.next_msg(timeout=10)
        assert msg.data == body
        # JetStream (the trajectory buffer) works for this user too.
        js = nc.jetstream()
        await js.add_stream(name="PROBE", subjects=["probe.>"])
        ack = await js.publish("probe.big", body)
        assert ack.seq == 1
        with pytest.raises(nats.errors.MaxPayloadError):
            await nc.publish("kuberl.probe", os.urandom(9 * MiB))
    finally:
        await nc.close()


def test_the_server_itself_refuses_a_9_mib_message(nats_url: str):
    """Not just the client's check of the advertised limit: the server enforces max_payload."""
    host, port = nats_url.removeprefix("nats://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"INFO ")
        connect_opts = {"user": GIVEN["user"], "pass": GIVEN["password"], "verbose": False, "pedantic": False}
        s.sendall(b"CONNECT " + json.dumps(connect_opts).encode() + b"\r\nPING\r\n")
        assert f.readline() == b"PONG\r\n"
        s.sendall(b"PUB kuberl.big %d\r\n" % (9 * MiB))
        assert b"Maximum Payload Violation" in f.readline()


# -- SeaweedFS: the rendered s3.json on the real server --------------------------------------

class Weed:
    def __init__(self, s3_port: int, master_port: int):
        self.endpoint = f"http://127.0.0.1:{s3_port}"
        self.master_port = master_port

    def client(self, *, signed: bool = True, secret: str | None = None):
        if not signed:
            return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=GIVEN["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=secret or GIVEN["AWS_SECRET_ACCESS_KEY"],
                            config=Config(retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
def weed(docs: list[dict], tmp_path_factory) -> Weed:
    pod, c = pod_of(docs, "StatefulSet", "kuberl-s3")
    assert c["command"] == ["weed"] and c["args"][0] == "server", c
    root = tmp_path_factory.mktemp("weed")
    data_mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data")
    args = []
    for arg in c["args"]:
        if arg.startswith("-s3.config="):
            # The identity file the pod sees, from the Secret mounted above its path.
            (root / "s3.json").write_text(mounted_file(docs, pod, c, arg.split("=", 1)[1]))
            arg = f"-s3.config={root / 's3.json'}"
        elif arg == f"-dir={data_mount}":
            (root / "data").mkdir()
            arg = f"-dir={root / 'data'}"
        args.append(arg)
    assert (root / "s3.json").exists() and (root / "data").exists(), c["args"]
    ports = {}
    for comp in ("master", "volume", "filer", "s3"):
        ports[f"{comp}.port"], ports[f"{comp}.port.grpc"] = seaweed_port_pair()
    # Flags given again win (Go's flag package): loopback, free ports, a small volume size
    # for a test disk; Iceberg and Lance are 4.x listeners the chart's 3.97 image lacks.
    args += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", *(f"-{k}={v}" for k, v in ports.items()),
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64"]
    log = root / "weed.log"
    # No AWS_* in its environment: weed would take them as admin credentials without a config.
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "TMPDIR": str(root)}  # its logs go to TMPDIR
    with open(log, "ab") as out:
        proc = subprocess.Popen([find_binary("weed"), *args], cwd=root, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=dies_with_parent())
    LIVE.add(proc)
    server = Weed(ports["s3.port"], ports["master.port"])
    client = server.client()

    def ready() -> bool:  # a signed round trip: gateway, filer and volume all up
        try:
            client.create_bucket(Bucket="ready")
            client.put_object(Bucket="ready", Key="probe", Body=b"ok")
            return True
        except (BotoCoreError, ClientError):
            return False

    try:
        wait_ready(ready, 90, "weed server", proc, log)
        yield server
    finally:
        stop_process(proc, timeout=3)
        remove_weed_sockets(ports.values())


def _code(call) -> str:
    with pytest.raises(ClientError) as err:
        call()
    return err.value.response["Error"]["Code"]


def test_s3_refuses_unsigned_requests(weed: Weed):
    anon = weed.client(signed=False)
    assert _code(anon.list_buckets) == "AccessDenied"
    assert _code(lambda: anon.list_objects_v2(Bucket="ready")) == "AccessDenied"
    assert _code(lambda: anon.get_object(Bucket="ready", Key="probe")) == "AccessDenied"
    assert _code(lambda: anon.put_object(Bucket="ready", Key="poison", Body=b"x")) == "AccessDenied"
    assert _code(lambda: anon.delete_object(Bucket="ready", Key="probe")) == "AccessDenied"
    assert _code(lambda: anon.create_bucket(Bucket="anon")) == "AccessDenied"
    assert _code(lambda: weed.client(secret="not-the-secret-key-at-all").list_buckets()) == "SignatureDoesNotMatch"
    assert weed.client().get_object(Bucket="ready", Key="probe")["Body"].read() == b"ok"


def test_s3_with_the_secrets_keys_creates_puts_and_gets(weed: Weed):
    s3 = weed.client()
    s3.create_bucket(Bucket="weights")
    s3.put_object(Bucket="weights", Key="policy/v1/model.safetensors", Body=b"\x00" * 1024)
    assert s3.get_object(Bucket="weights", Key="policy/v1/model.safetensors")["Body"].read() == b"\x00" * 1024
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="weights")["Contents"]] == ["policy/v1/model.safetensors"]


def test_the_bucket_job_creates_the_buckets_through_the_master_service(docs: list[dict], weed: Weed, tmp_path: Path):
    pod, c = pod_of(docs, "Job", "kuberl-s3-buckets")
    assert c["command"] == ["sh", "-ec"]
    script = c["args"][0]
    [(host, port)] = re.findall(r"weed shell -master=([a-z0-9-]+):(\d+)", script)
    # weed shell dials the master's gRPC port (the given port + 10000): the Service it names
    # must publish that, to the pod's master-grpc port, and nothing else.
    svc = find(docs, "Service", host)
    assert [p["port"] for p in svc["spec"]["ports"]] == [int(port) + 10000], svc["spec"]["ports"]
    s3_pod, s3c = pod_of(docs, "StatefulSet", "kuberl-s3")
    named = {p["name"]: p["containerPort"] for p in s3c["ports"]}
    assert named[svc["spec"]["ports"][0]["targetPort"]] == int(port) + 10000
    assert svc["spec"]["selector"].items() <= find(docs, "StatefulSet", "kuberl-s3")["spec"]["template"]["metadata"]["labels"].items()
    local = script.replace(f"-master={host}:{port}", f"-master=127.0.0.1:{weed.master_port}")
    env = {"PATH": f"{Path(find_binary('weed')).parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    proc = subprocess.run(["sh", "-ec", local], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s3 = weed.client()
    [buckets] = re.findall(r"for bucket in ([^;]+); do", script)
    assert buckets.split() == ["kuberl"]  # values.yaml's stack.s3.buckets
    for bucket in buckets.split():
        s3.head_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="k", Body=b"v")
        assert _code(lambda: weed.client(signed=False).list_objects_v2(Bucket=bucket)) == "AccessDenied"


# -- what the rendered objects expose --------------------------------------------------------

def test_services_publish_only_the_client_and_s3_ports(docs: list[dict]):
    ports = {s["metadata"]["name"]: [(p["name"], p["port"]) for p in s["spec"]["ports"]] for s in by_kind(docs, "Service")}
    assert ports["kuberl-nats"] == [("client", 4222)]
    assert ports["kuberl-s3"] == [("s3", 8333)]
    assert ports["kuberl-s3-master"] == [("master-grpc", 19333)]
    published = {p for ps in ports.values() for _, p in ps}
    assert not published & {8222, 9333, 8080, 8888, 18888}, ports
    # The monitor and master HTTP ports stay on the containers, for the kubelet's probes.
    _, nats_c = pod_of(docs, "StatefulSet", "kuberl-nats")
    _, s3_c = pod_of(docs, "StatefulSet", "kuberl-s3")
    assert nats_c["readinessProbe"]["httpGet"]["port"] == "monitor" and {"name": "monitor", "containerPort": 8222} in nats_c["ports"]
    assert s3_c["readinessProbe"]["httpGet"]["port"] == "master" and {"name": "master", "containerPort": 9333} in s3_c["ports"]


def test_the_secret_carries_the_keys_jobs_read(docs: list[dict]):
    secret = find(docs, "Secret", SECRET)
    assert secret_data(secret) == GIVEN and set(secret_data(secret)) == KEYS
    # One Secret satisfies both of a job's credential fields, by the operator's own check.
    j = job()
    wire = j.spec.to_wire()
    j = j.model_validate({"metadata": j.metadata, "spec": {
        **wire, "buffer": {**wire["buffer"], "credentialsSecret": {"name": SECRET}},
        "weightStore": {**wire["weightStore"], "credentialsSecret": {"name": SECRET}}}})
    assert secret_errors(j, {SECRET: frozenset(secret_data(secret))}) == []
    assert auth_options(secret_data(secret)) == {"user": GIVEN["user"], "password": GIVEN["password"]}
    # The pods reference it, they do not carry it.
    _, nats_c = pod_of(docs, "StatefulSet", "kuberl-nats")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in nats_c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"NATS_USER": {"name": SECRET, "key": "user"}, "NATS_PASSWORD": {"name": SECRET, "key": "password"}}
    identities = json.loads(secret_data(find(docs, "Secret", "kuberl-s3-config"))["s3.json"])["identities"]
    assert [i["name"] for i in identities] == ["kuberl"]  # no "anonymous" identity
    assert identities[0]["credentials"] == [{"accessKey": GIVEN["AWS_ACCESS_KEY_ID"], "secretKey": GIVEN["AWS_SECRET_ACCESS_KEY"]}]
    assert sorted(identities[0]["actions"]) == ["Admin", "List", "Read", "Tagging", "Write"]


def test_no_credential_appears_outside_secrets(docs: list[dict]):
    values = [GIVEN["password"], GIVEN["AWS_ACCESS_KEY_ID"], GIVEN["AWS_SECRET_ACCESS_KEY"]]
    for d in docs:
        if d["kind"] == "Secret":
            continue
        text = yaml.safe_dump(d)
        for v in values:
            assert v not in text and base64.b64encode(v.encode()).decode() not in text, f"{d['kind']}/{d['metadata']['name']}"
    assert by_kind(docs, "ConfigMap")  # the NATS config is one of them


# -- NetworkPolicies, evaluated against the pods the operator builds -------------------------

def admitted(policy: dict, labels: dict, namespace: str, port: int) -> bool:
    """Whether `policy` lets a pod (labels, namespace) open `port`, by NetworkPolicy semantics."""
    for rule in policy["spec"].get("ingress", []):
        if rule.get("ports") and port not in [p["port"] for p in rule["ports"]]:
            continue
        for peer in rule.get("from", []):
            ns_sel = peer.get("namespaceSelector")
            assert ns_sel in (None, {}), "namespace labels are not modelled here"
            if ns_sel is None and namespace != policy["metadata"]["namespace"]:
                continue
            if selects(peer.get("podSelector") or {}, labels):
                return True
    return False


def _agent_env_pod_labels() -> dict:
    env = AgentEnv.model_validate(example("agentenv-calculator.yaml", "AgentEnv"))
    return agent_env_deployment(env, NS, S)["spec"]["template"]["metadata"]["labels"]


def test_network_policies_admit_only_job_pods_the_operator_and_the_bucket_job(docs: list[dict]):
    trainer = trainer_pod(job(), NS, 0, 0, S)["metadata"]["labels"]
    rollout = rollout_deployment(pool(), NS, S, bound_job="j")["spec"]["template"]["metadata"]["labels"]
    operator = find(docs, "Deployment", "kuberl-operator")["spec"]["template"]["metadata"]["labels"]
    buckets = find(docs, "Job", "kuberl-s3-buckets")["spec"]["template"]["metadata"]["labels"]
    agent_env = _agent_env_pod_labels()
    nats_np, s3_np = find(docs, "NetworkPolicy", "kuberl-nats"), find(docs, "NetworkPolicy", "kuberl-s3")
    for policy, sts in ((nats_np, "kuberl-nats"), (s3_np, "kuberl-s3")):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert selects(policy["spec"]["podSelector"], find(docs, "StatefulSet", sts)["spec"]["template"]["metadata"]["labels"])

    for port in (4222, 8333):
        policy = nats_np if port == 4222 else s3_np
        assert admitted(policy, trainer, NS, port) and admitted(policy, rollout, "another-team", port)
        assert admitted(policy, operator, RELEASE_NS, port)
        assert not admitted(policy, operator, "default", port)  # operator labels elsewhere are nobody
        assert not admitted(policy, agent_env, NS, port)  # model-written code
        assert not admitted(policy, {"app": "curl"}, RELEASE_NS, port)
        assert not admitted(policy, buckets, RELEASE_NS, port)
    for port in (8222, 6222):
        assert not admitted(nats_np, trainer, NS, port)
    for port in (9333, 19333, 18888, 8888, 8080):  # master, filer and volume: never for job pods
        assert not admitted(s3_np, trainer, NS, port) and not admitted(s3_np, operator, RELEASE_NS, port)
    assert admitted(s3_np, buckets, RELEASE_NS, 19333) and admitted(s3_np, buckets, RELEASE_NS, 18888)
    assert not admitted(s3_np, buckets, "default", 19333) and not admitted(s3_np, buckets, RELEASE_NS, 9333)


def test_network_policies_can_be_switched_off(helm: Path):  # noqa: F811
    assert not by_kind(render(helm, *GIVEN_ARGS, "--set", "stack.networkPolicy.enabled=false"), "NetworkPolicy")
    assert not by_kind(render(helm), "NetworkPolicy")  # no stack, nothing to guard


# -- generated credentials, copies, your own Secret ------------------------------------------

def test_generated_credentials_are_rendered_once_per_render_and_fresh_each_time(helm: Path, tmp_path: Path):  # noqa: F811
    first, second = render(helm, "-f", str(STACK_VALUES)), render(helm, "-f", str(STACK_VALUES))
    creds = []
    for docs in (first, second):
        data = secret_data(find(docs, "Secret", SECRET))
        assert set(data) == KEYS and data["user"] == "kuberl"
        # A letter first: nats-server parses an environment value as config (digits: a number).
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{31}", data["password"]), data["password"]
        assert re.fullmatch(r"[A-Z0-9]{20}", data["AWS_ACCESS_KEY_ID"]) and re.fullmatch(r"[A-Za-z0-9]{40}", data["AWS_SECRET_ACCESS_KEY"])
        # The same values everywhere in one render: s3.json and both pods' rollout checksums.
        [identity] = json.loads(secret_data(find(docs, "Secret", "kuberl-s3-config"))["s3.json"])["identities"]
        assert identity["credentials"] == [{"accessKey": data["AWS_ACCESS_KEY_ID"], "secretKey": data["AWS_SECRET_ACCESS_KEY"]}]
        digest = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        for sts in ("kuberl-nats", "kuberl-s3"):
            assert find(docs, "StatefulSet", sts)["spec"]["template"]["metadata"]["annotations"]["checksum/credentials"] == digest
        # nats-server accepts the config with these values in its environment.
        pod, c = pod_of(docs, "StatefulSet", "kuberl-nats")
        conf = tmp_path / "nats.conf"
        conf.write_text(mounted_file(docs, pod, c, c["args"][1]))
        check = subprocess.run([find_binary("nats-server"), "-c", str(conf), "-t"], capture_output=True, text=True,
                               env={"PATH": os.environ["PATH"], **resolved_env(docs, c, "kuberl-nats-0")}, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        creds.append(data)
    # `helm template` cannot look the release's Secret up, so it generates anew; a real
    # install/upgrade reads it back (lookup), which needs a cluster to show.
    assert creds[0]["password"] != creds[1]["password"]
    assert creds[0]["AWS_SECRET_ACCESS_KEY"] != creds[1]["AWS_SECRET_ACCESS_KEY"]


def _credential_secrets(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["metadata"]["namespace"], d["metadata"]["name"]): secret_data(d) for d in by_kind(docs, "Secret")
            if not d["metadata"]["name"].endswith("-s3-config")}


def test_copies_go_to_the_listed_namespaces_or_else_the_watched_ones(helm: Path):  # noqa: F811
    listed = _credential_secrets(render(helm, *GIVEN_ARGS, "--set", "stack.credentials.namespaces={team-a,team-b}",
                                        "--set", "operator.watchNamespaces={team-c}"))
    assert listed == {(RELEASE_NS, SECRET): GIVEN, ("team-a", SECRET): GIVEN, ("team-b", SECRET): GIVEN}
    watched = _credential_secrets(render(helm, *GIVEN_ARGS, "--set", f"operator.watchNamespaces={{team-c,{RELEASE_NS}}}"))
    # The release namespace already holds it under the jobs' name: no second object.
    assert watched == {(RELEASE_NS, SECRET): GIVEN, ("team-c", SECRET): GIVEN}
    assert _credential_secrets(render(helm, *GIVEN_ARGS)) == {(RELEASE_NS, SECRET): GIVEN}
    renamed = _credential_secrets(render(helm, *GIVEN_ARGS, "--set", "fullnameOverride=lab",
                                         "--set", f"stack.credentials.namespaces={{{RELEASE_NS}}}"))
    assert renamed == {(RELEASE_NS, "lab-stack-credentials"): GIVEN, (RELEASE_NS, SECRET): GIVEN}


def test_an_existing_secret_replaces_the_generated_one(helm: Path):  # noqa: F811
    docs = render(helm, "-f", str(STACK_VALUES), "--set", "stack.credentials.existingSecret=team-creds")
    assert not by_kind(docs, "Secret")
    pod, c = pod_of(docs, "StatefulSet", "kuberl-nats")
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})} == {"team-creds"}
    pod, c = pod_of(docs, "StatefulSet", "kuberl-s3")
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": "team-creds", "items": [{"key": "s3.json", "path": "s3.json"}]}
    proc = run_helm(helm, "template", "kuberl", str(CHART), "-f", str(STACK_VALUES),
                    "--set", "stack.credentials.existingSecret=team-creds", "--set", "stack.credentials.namespaces={team-a}")
    assert proc.returncode != 0 and "stack.credentials.namespaces" in proc.stderr, proc.stderr
