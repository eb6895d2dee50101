"""Pure functions that render the children of a FineTuneJob.

Nothing here talks to the API server: given the validated job (tuneguard.api.FineTuneJob), its uid
and the group-restart attempt, each function returns the manifest of one child as a plain dict. The
reconciler creates them (or patches the mutable parts), the unit tests read them.

Children, all owned by the FineTuneJob (ownerReferences, controller=true, blockOwnerDeletion), so
that deleting the job removes them through garbage collection without any finalizer:

  <job>-config   ConfigMap: the validated manifest at contract.CONFIG_FILE
  <job>-worker   headless Service: stable DNS for every rank, rank 0 is <job>-worker-0.<job>-worker
  <job>-trainer  ServiceAccount + Role + RoleBinding: get/patch this job's status, nothing else
  <job>-worker   Indexed Job: one pod per worker, node rank = completion index
"""

from __future__ import annotations

from typing import Any

import yaml

from tuneguard import api, contract

CONTAINER = "trainer"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
CACHE_DIR = "/var/cache/tuneguard"
TMP_DIR = "/tmp"
RUN_AS_USER = 1000


# ------------------------------------------------------------------------------------------ names


def config_name(job: str) -> str:
    return f"{job}-config"


def service_name(job: str) -> str:
    return f"{job}-worker"


def network_policy_name(job: str) -> str:
    return f"{job}-workers"


def worker_job_name(job: str) -> str:
    return f"{job}-worker"


def account_name(job: str) -> str:
    return f"{job}-trainer"


def worker_hostname(job: str, index: int) -> str:
    """An Indexed Job's pod hostname is <job name>-<index>; with subdomain=service it resolves."""
    return f"{worker_job_name(job)}-{index}"


def master_addr(job: str) -> str:
    return f"{worker_hostname(job, 0)}.{service_name(job)}"


# ----------------------------------------------------------------------------------------- common


def owner_reference(ftj: api.FineTuneJob, uid: str) -> dict:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": ftj.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def base_labels(ftj: api.FineTuneJob) -> dict[str, str]:
    return {
        contract.LABEL_JOB: ftj.metadata.name,
        contract.LABEL_METHOD: ftj.spec.method.type,
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
    }


def worker_labels(ftj: api.FineTuneJob) -> dict[str, str]:
    """Labels of the worker pods (the PodMonitor and the headless Service select on them)."""
    return {**base_labels(ftj), contract.LABEL_ROLE: "worker"}


def selector_labels(ftj: api.FineTuneJob) -> dict[str, str]:
    return {contract.LABEL_JOB: ftj.metadata.name, contract.LABEL_ROLE: "worker"}


def _meta(ftj: api.FineTuneJob, uid: str, name: str, labels: dict | None = None) -> dict:
    return {
        "name": name,
        "namespace": ftj.metadata.namespace,
        "labels": labels or base_labels(ftj),
        "ownerReferences": [owner_reference(ftj, uid)],
    }


def nprocs(ftj: api.FineTuneJob) -> int:
    """Processes per worker pod: one per GPU, one on CPU."""
    return max(ftj.spec.resources.gpus_per_worker, 1)


# ------------------------------------------------------------------------------------ config map


def manifest_yaml(ftj: api.FineTuneJob) -> str:
    """The validated manifest the trainer reads (defaults filled in, status left out)."""
    doc = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": ftj.metadata.name, "namespace": ftj.metadata.namespace},
        "spec": ftj.spec.wire(),
    }
    return yaml.safe_dump(doc, sort_keys=False)


def config_map(ftj: api.FineTuneJob, uid: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ftj, uid, config_name(ftj.metadata.name)),
        "data": {contract.CONFIG_FILE: manifest_yaml(ftj)},
    }


# --------------------------------------------------------------------------------------- service


def headless_service(ftj: api.FineTuneJob, uid: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ftj, uid, service_name(ftj.metadata.name)),
        "spec": {
            "clusterIP": "None",
            # Ranks must resolve rank 0 before it is Ready (it is not Ready until all ranks joined).
            "publishNotReadyAddresses": True,
            "selector": selector_labels(ftj),
            "ports": [
                {"name": "master", "port": contract.MASTER_PORT, "targetPort": contract.MASTER_PORT,
                 "protocol": "TCP"},
                {"name": contract.METRICS_PORT_NAME, "port": contract.METRICS_PORT,
                 "targetPort": contract.METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }


# ------------------------------------------------------------------------------------- network policy


def network_policy(ftj: api.FineTuneJob, uid: str) -> dict:
    """Ingress to the workers: from the job's own workers on any TCP port (torchrun's rendezvous on the master
    port, then NCCL's and Gloo's connections, on ports they pick at run time), from anywhere else only to the
    metrics port (Prometheus). Egress stays open: workers fetch models and data and patch their job's status."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(ftj, uid, network_policy_name(ftj.metadata.name)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(ftj)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": selector_labels(ftj)}}]},
                {"ports": [{"port": contract.METRICS_PORT, "protocol": "TCP"}]},
            ],
        },
    }


# ------------------------------------------------------------------------------------------ rbac


def service_account(ftj: api.FineTuneJob, uid: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(ftj, uid, account_name(ftj.metadata.name)),
    }


def role(ftj: api.FineTuneJob, uid: str) -> dict:
    """Rank 0 may read its own FineTuneJob and patch its status; nothing else, no other job."""
    name = ftj.metadata.name
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(ftj, uid, account_name(name)),
        "rules": [
            {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "resourceNames": [name], "verbs": ["get"]},
            {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "resourceNames": [name],
             "verbs": ["get", "patch"]},
        ],
    }


def role_binding(ftj: api.FineTuneJob, uid: str) -> dict:
    name = ftj.metadata.name
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(ftj, uid, account_name(name)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account_name(name)},
        "subjects": [{"kind": "ServiceAccount", "name": account_name(name), "namespace": ftj.metadata.namespace}],
    }


# ----------------------------------------------------------------------------------------- volumes


def output_dir(ftj: api.FineTuneJob) -> str:
    """Where the trainer writes: OUTPUT_DIR, or OUTPUT_DIR/<path> for pvc://claim/<path>."""
    out = contract.pvc_claim(ftj.spec.output.uri)
    return f"{contract.OUTPUT_DIR}/{out[1]}" if out and out[1] else contract.OUTPUT_DIR


def input_claims(ftj: api.FineTuneJob) -> list[str]:
    """Claims the model and data come from, in first-use order (mounted read-only)."""
    spec = ftj.spec
    uris = [spec.model.uri, spec.datasets.train, spec.datasets.probes.known, spec.datasets.probes.unknown,
            spec.evaluation.drift_prompts]
    claims: list[str] = []
    for uri in uris:
        ref = contract.pvc_claim(uri)
        if ref and ref[0] not in claims:
            claims.append(ref[0])
    return claims


def _volumes(ftj: api.FineTuneJob) -> tuple[list[dict], list[dict]]:
    res = ftj.spec.resources
    volumes: list[dict] = [
        {"name": "config", "configMap": {"name": config_name(ftj.metadata.name)}},
        # Containers get a 64 MB /dev/shm by default; NCCL and the data loaders need far more.
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}},
        {"name": "cache", "emptyDir": {}},
        # The root file system is read-only: scratch files (torch, DeepSpeed, tempfile) go to /tmp.
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict] = [
        {"name": "config", "mountPath": contract.CONFIG_DIR, "readOnly": True},
        {"name": "shm", "mountPath": contract.SHM_DIR},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    out = contract.pvc_claim(ftj.spec.output.uri)
    if out:
        # The claim's root, not a subPath: the kubelet creates a missing subPath directory as root, which
        # the non-root trainer then cannot write. The trainer creates output_dir(ftj) itself, as its uid.
        claim, _ = out
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": "output", "mountPath": contract.OUTPUT_DIR})
    else:
        volumes.append({"name": "output", "emptyDir": {}})
        mounts.append({"name": "output", "mountPath": contract.OUTPUT_DIR})
    for i, claim in enumerate(input_claims(ftj)):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{contract.PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


# --------------------------------------------------------------------------------------------- env


def _env(ftj: api.FineTuneJob) -> list[dict]:
    name, ns = ftj.metadata.name, ftj.metadata.namespace
    res = ftj.spec.resources

    def v(key: str, value: Any) -> dict:
        return {"name": key, "value": str(value)}

    env = [
        v(contract.ENV_MASTER_ADDR, master_addr(name)),
        v(contract.ENV_MASTER_PORT, contract.MASTER_PORT),
        v(contract.ENV_NNODES, res.workers),
        v(contract.ENV_NPROC_PER_NODE, nprocs(ftj)),
        {"name": contract.ENV_NODE_RANK, "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}},
        v(contract.ENV_JOB_NAME, name),
        v(contract.ENV_JOB_NAMESPACE, ns),
        v(contract.ENV_OUTPUT_DIR, output_dir(ftj)),
        v(contract.ENV_METRICS_PORT, contract.METRICS_PORT),
        v(contract.ENV_STATUS_PATCH, 1),
        v("PYTHONUNBUFFERED", 1),
        v("HF_HOME", f"{CACHE_DIR}/huggingface"),
        v("XDG_CACHE_HOME", CACHE_DIR),
        # Libraries that ignore XDG_CACHE_HOME and would write under $HOME on the read-only root.
        v("TRITON_CACHE_DIR", f"{CACHE_DIR}/triton"),
        v("MPLCONFIGDIR", f"{CACHE_DIR}/matplotlib"),
        # A pod's log is no terminal: every progress-bar refresh is a line, so refresh at most every 30 s.
        v("TQDM_MININTERVAL", 30),
        # A dead peer must abort the collective instead of hanging, so the group restart can happen.
        v("TORCH_NCCL_ASYNC_ERROR_HANDLING", 1),
        v("NCCL_DEBUG", "WARN"),
    ]
    if res.gpus_per_worker == 0:
        env.append(v("DS_ACCELERATOR", "cpu"))
    cred = ftj.spec.model.credentials_secret
    if cred is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": cred.name, "key": cred.key}}})
    # The user's knobs (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) last: they replace defaults such as
    # NCCL_DEBUG; the API refuses the launch variables (api.RESERVED_ENV, TUNEGUARD_*).
    for extra in res.env or []:
        entry = v(extra.name, extra.value)
        at = next((i for i, e in enumerate(env) if e["name"] == extra.name), None)
        if at is None:
            env.append(entry)
        else:
            env[at] = entry
    return env


# ---------------------------------------------------------------------------------------- the job


def pod_template(ftj: api.FineTuneJob, restart_attempt: int) -> dict:
    name = ftj.metadata.name
    res = ftj.spec.resources
    volumes, mounts = _volumes(ftj)
    resources: dict[str, dict[str, Any]] = {
        "requests": {"cpu": res.cpu, "memory": res.memory},
        "limits": {"cpu": res.cpu, "memory": res.memory},
    }
    if res.gpus_per_worker > 0:
        resources["limits"]["nvidia.com/gpu"] = res.gpus_per_worker
        resources["requests"]["nvidia.com/gpu"] = res.gpus_per_worker
    labels = worker_labels(ftj)
    labels[contract.LABEL_ATTEMPT] = str(restart_attempt)
    if res.queue_name:
        labels[contract.KUEUE_QUEUE_LABEL] = res.queue_name
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the group restart is the operator's (Job backoffLimit 0)
        "subdomain": service_name(name),
        "serviceAccountName": account_name(name),
        "automountServiceAccountToken": True,  # rank 0 patches status.training with it
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": CONTAINER,
            "image": res.image,
            "imagePullPolicy": res.image_pull_policy,
            "command": list(contract.WORKER_COMMAND),
            "env": _env(ftj),
            "ports": [
                {"name": contract.METRICS_PORT_NAME, "containerPort": contract.METRICS_PORT, "protocol": "TCP"},
                {"name": "master", "containerPort": contract.MASTER_PORT, "protocol": "TCP"},
            ],
            "resources": resources,
            "volumeMounts": mounts,
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": volumes,
    }
    if res.node_selector:
        spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        spec["tolerations"] = [t.wire() for t in res.tolerations]
    if res.priority_class_name:
        spec["priorityClassName"] = res.priority_class_name
    if res.scheduler_name:
        spec["schedulerName"] = res.scheduler_name
    return {"metadata": {"labels": labels}, "spec": spec}


def worker_job(ftj: api.FineTuneJob, uid: str, restart_attempt: int, suspend: bool) -> dict:
    """The Indexed Job: completions = parallelism = workers, one failure fails the whole Job.

    backoffLimit 0 plus a FailJob rule: a failed worker fails the Job at once (the Job controller
    stops the other ranks) and the operator restarts the whole group by re-creating the Job, which
    is what collective training needs (a lone replacement pod cannot rejoin a torn-down NCCL group).
    """
    name = ftj.metadata.name
    res = ftj.spec.resources
    labels = base_labels(ftj)
    labels[contract.LABEL_ROLE] = "worker"
    labels[contract.LABEL_ATTEMPT] = str(restart_attempt)
    if res.queue_name:
        labels[contract.KUEUE_QUEUE_LABEL] = res.queue_name
    meta = _meta(ftj, uid, worker_job_name(name), labels)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": res.workers,
            "parallelism": res.workers,
            "backoffLimit": 0,
            # Rule 0 first: a worker preempted, evicted or drained fails the Job through it, which tells the
            # operator (policies.group.disrupted) to restart the group without spending backoffLimit.
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}},
            ]},
            # With a queue, Kueue admits (unsuspends) the Job; without one the operator does.
            "suspend": bool(suspend or res.queue_name),
            "template": pod_template(ftj, restart_attempt),
        },
    }


def children(ftj: api.FineTuneJob, uid: str) -> list[dict]:
    """Every child but the Job, in creation order (the Job's pods need all of them)."""
    return [config_map(ftj, uid), headless_service(ftj, uid), network_policy(ftj, uid), service_account(ftj, uid),
            role(ftj, uid), role_binding(ftj, uid)]
