"""Rendering of a FineTuneJob's children: pure functions, checked against the contract."""

from pathlib import Path

import yaml

from tuneguard import contract
from tuneguard.validation import load_job, parse_job
from tuneguard_operator import render

ROOT = Path(__file__).resolve().parents[3]
UID = "0000-uid"


def multinode():
    return load_job(ROOT / "examples" / "multinode-sft.yaml")


def env_of(pod):
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def test_children_are_owned_by_the_job_and_labelled():
    ftj = multinode()
    for child in [*render.children(ftj, UID), render.worker_job(ftj, UID, 0, suspend=False)]:
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "tuneguard.io/v1alpha1", "kind": "FineTuneJob", "name": "facts-sft",
                       "uid": UID, "controller": True, "blockOwnerDeletion": True}
        assert child["metadata"]["namespace"] == "ml-team"
        assert child["metadata"]["labels"][contract.LABEL_JOB] == "facts-sft"
        assert child["metadata"]["labels"][contract.LABEL_MANAGED_BY] == contract.MANAGED_BY


def test_config_map_holds_the_validated_manifest_only():
    ftj = multinode()
    cm = render.config_map(ftj, UID)
    doc = yaml.safe_load(cm["data"][contract.CONFIG_FILE])
    again = parse_job(doc)  # the trainer validates it with the same models
    assert again.spec == ftj.spec
    assert set(cm["data"]) == {contract.CONFIG_FILE}  # the workers launch torchrun: no DeepSpeed hostfile


def test_indexed_job_shape():
    ftj = multinode()
    job = render.worker_job(ftj, UID, 2, suspend=False)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimit"] == 0
    disruption, exit_code = spec["podFailurePolicy"]["rules"]  # the order matters: an evicted pod exits 137 too
    assert disruption == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert exit_code["action"] == "FailJob" and exit_code["onExitCodes"]["operator"] == "NotIn"
    assert spec["suspend"] is False
    assert job["metadata"]["labels"][contract.LABEL_ATTEMPT] == "2"
    pod = spec["template"]
    assert pod["spec"]["subdomain"] == render.service_name("facts-sft") == "facts-sft-worker"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == "facts-sft-trainer"
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert pod["metadata"]["labels"][contract.LABEL_ROLE] == "worker"
    assert pod["metadata"]["labels"][contract.LABEL_METHOD] == "sft"


def test_worker_pod_env():
    ftj = multinode()
    env = env_of(render.pod_template(ftj, 3))
    assert env["MASTER_ADDR"]["value"] == "facts-sft-worker-0.facts-sft-worker"
    assert env["MASTER_PORT"]["value"] == str(contract.MASTER_PORT)
    assert "WORLD_SIZE" not in env  # the worker derives it from NNODES x NPROC_PER_NODE
    assert env["NNODES"]["value"] == "2"
    assert env["NPROC_PER_NODE"]["value"] == "8"
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert not {k for k in env if k.startswith("TUNEGUARD_")} - {  # only what the trainer reads
        contract.ENV_OUTPUT_DIR, contract.ENV_JOB_NAME, contract.ENV_JOB_NAMESPACE, contract.ENV_STATUS_PATCH,
        contract.ENV_METRICS_PORT}
    assert env[contract.ENV_OUTPUT_DIR]["value"] == f"{contract.OUTPUT_DIR}/facts-sft"  # pvc://checkpoints/facts-sft
    assert env[contract.ENV_JOB_NAME]["value"] == "facts-sft"
    assert env[contract.ENV_JOB_NAMESPACE]["value"] == "ml-team"
    assert env[contract.ENV_STATUS_PATCH]["value"] == "1"
    assert env["PYTHONUNBUFFERED"]["value"] == "1"
    assert env["TQDM_MININTERVAL"]["value"] == "30"  # progress bars are log lines in a pod
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}
    assert "DS_ACCELERATOR" not in env


def test_worker_pod_resources_volumes_and_security():
    ftj = multinode()
    pod = render.pod_template(ftj, 0)
    c = pod["spec"]["containers"][0]
    assert c["command"] == contract.WORKER_COMMAND
    assert c["image"] == "ghcr.io/tuneguard/trainer:0.1.0"
    assert c["resources"]["limits"] == {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": 8}
    assert c["resources"]["requests"]["cpu"] == "32"
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in c["ports"]
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert vols["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert mounts["/dev/shm"]["name"] == "shm"
    assert vols["output"]["persistentVolumeClaim"] == {"claimName": "checkpoints"}
    # No subPath (the kubelet would create it as root): the trainer writes under the claim's root.
    assert "subPath" not in mounts[contract.OUTPUT_DIR]
    assert env_of(pod)[contract.ENV_OUTPUT_DIR]["value"] == f"{contract.OUTPUT_DIR}/facts-sft"
    assert mounts[f"{contract.PVC_MOUNT_ROOT}/datasets"]["readOnly"] is True
    datasets = vols[mounts[f"{contract.PVC_MOUNT_ROOT}/datasets"]["name"]]
    assert datasets["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert mounts[contract.CONFIG_DIR]["readOnly"] is True
    assert vols["config"]["configMap"]["name"] == "facts-sft-config"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    # A read-only root: everything the trainer writes goes to a mounted volume.
    assert sc["readOnlyRootFilesystem"] is True
    assert vols[mounts["/tmp"]["name"]]["emptyDir"] == {} and vols[mounts[render.CACHE_DIR]["name"]]["emptyDir"] == {}
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_cpu_job_has_no_gpu_limit_and_an_emptydir_output():
    ftj = load_job(ROOT / "examples" / "quickstart.yaml")
    ftj.metadata.namespace = "default"
    pod = render.pod_template(ftj, 0)
    c = pod["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert env_of(pod)["DS_ACCELERATOR"]["value"] == "cpu"
    assert env_of(pod)["NNODES"]["value"] == "1" and env_of(pod)["NPROC_PER_NODE"]["value"] == "1"
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["output"] == {"name": "output", "emptyDir": {}}
    assert "HF_TOKEN" not in env_of(pod)


def test_queue_priority_scheduler():
    doc = yaml.safe_load((ROOT / "examples" / "multinode-sft.yaml").read_text())
    doc["spec"]["resources"].update(queueName="team-a", priorityClassName="training", schedulerName="volcano")
    ftj = parse_job(doc)
    job = render.worker_job(ftj, UID, 0, suspend=False)
    assert job["metadata"]["labels"][contract.KUEUE_QUEUE_LABEL] == "team-a"
    assert job["spec"]["suspend"] is True  # Kueue admits it
    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "training" and pod["schedulerName"] == "volcano"


def test_service_and_rbac():
    ftj = multinode()
    svc = render.headless_service(ftj, UID)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {contract.LABEL_JOB: "facts-sft", contract.LABEL_ROLE: "worker"}
    role = render.role(ftj, UID)
    assert all(rule["resourceNames"] == ["facts-sft"] for rule in role["rules"])
    status_rule = next(r for r in role["rules"] if r["resources"] == ["finetunejobs/status"])
    assert set(status_rule["verbs"]) == {"get", "patch"}
    rb = render.role_binding(ftj, UID)
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "facts-sft-trainer", "namespace": "ml-team"}]
    assert rb["roleRef"]["name"] == role["metadata"]["name"]


def test_user_env_reaches_the_workers_and_overrides_defaults_only():
    import pytest

    from tuneguard.validation import InvalidManifest

    doc = yaml.safe_load((ROOT / "examples" / "multinode-sft.yaml").read_text())
    doc["spec"]["resources"]["env"] = [{"name": "NCCL_SOCKET_IFNAME", "value": "eth0"},
                                       {"name": "NCCL_DEBUG", "value": "INFO"}]
    env = env_of(render.pod_template(parse_job(doc), 0))
    assert env["NCCL_SOCKET_IFNAME"]["value"] == "eth0" and env["NCCL_DEBUG"]["value"] == "INFO"
    names = [e["name"] for e in render.pod_template(parse_job(doc), 0)["spec"]["containers"][0]["env"]]
    assert len(names) == len(set(names))
    for reserved in ("MASTER_ADDR", "TUNEGUARD_RESTART_ATTEMPT"):
        doc["spec"]["resources"]["env"] = [{"name": reserved, "value": "x"}]
        with pytest.raises(InvalidManifest, match="spec.resources.env: env may not set the launch variables"):
            parse_job(doc)


def test_the_workers_network_policy_admits_peers_anywhere_and_others_at_the_metrics_port_only():
    ftj = multinode()
    policy = render.network_policy(ftj, UID)
    pod = render.worker_job(ftj, UID, 0, suspend=False)["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]  # egress open: hubs, object stores, the API server
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    peers, others = spec["ingress"]
    (peer,) = peers["from"]
    assert peer["podSelector"]["matchLabels"].items() <= labels.items() and "ports" not in peers
    assert peer["podSelector"]["matchLabels"][contract.LABEL_JOB] == "facts-sft"  # this job's workers, no other's
    assert "from" not in others
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert others["ports"] == [{"port": ports[contract.METRICS_PORT_NAME], "protocol": "TCP"}]
