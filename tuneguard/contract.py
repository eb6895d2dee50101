"""What the operator and the trainer agree on: pod environment, paths, ports, labels, metric names.

One place for each name, imported by both components (and the chart's dashboard generator), so a
rename cannot leave one side behind.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- worker pod contract
CONFIG_DIR = "/etc/tuneguard"
CONFIG_FILE = "job.yaml"  # the validated FineTuneJob manifest (metadata + spec) as YAML
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
OUTPUT_DIR = "/output"  # checkpoints, report.json, plots; a PVC subPath or an emptyDir
PVC_MOUNT_ROOT = "/mnt/pvc"  # pvc://claim/path is mounted at /mnt/pvc/claim, read as /mnt/pvc/claim/path
PVC_SCHEME = "pvc://"
SHM_DIR = "/dev/shm"
METRICS_PORT = 9400
METRICS_PORT_NAME = "metrics"
MASTER_PORT = 29500

ENV_JOB_NAME = "TUNEGUARD_JOB_NAME"
ENV_JOB_NAMESPACE = "TUNEGUARD_JOB_NAMESPACE"
ENV_OUTPUT_DIR = "TUNEGUARD_OUTPUT_DIR"
ENV_METRICS_PORT = "TUNEGUARD_METRICS_PORT"
ENV_STATUS_PATCH = "TUNEGUARD_STATUS_PATCH"  # "1": rank 0 patches FineTuneJob status.training
# The job's topology (Kubeflow's names). The operator decides it; the worker alone turns it into
# torch.distributed's RANK / WORLD_SIZE / LOCAL_RANK (tuneguard_trainer.worker.Topology).
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_MASTER_PORT = "MASTER_PORT"
ENV_NNODES = "NNODES"
ENV_NPROC_PER_NODE = "NPROC_PER_NODE"
ENV_NODE_RANK = "NODE_RANK"  # from the Indexed Job's completion index

WORKER_COMMAND = ["tuneguard", "worker", "--config", CONFIG_PATH]


def pvc_claim(uri: str | None) -> tuple[str, str] | None:
    """pvc://claim/path -> (claim, path without surrounding slashes); any other URI -> None."""
    if not uri or not uri.startswith(PVC_SCHEME):
        return None
    claim, _, path = uri[len(PVC_SCHEME):].partition("/")
    return claim, path.strip("/")


def pvc_mount_path(uri: str) -> str | None:
    """Where a worker reads pvc://claim/path (the operator mounts the claim at PVC_MOUNT_ROOT/claim)."""
    ref = pvc_claim(uri)
    return None if ref is None else "/".join(x for x in (PVC_MOUNT_ROOT, *ref) if x)

# --------------------------------------------------------------------------------------- labels
LABEL_JOB = "tuneguard.io/job"
LABEL_ROLE = "tuneguard.io/role"  # "worker" on trainer pods: the PodMonitor selects on it
LABEL_METHOD = "tuneguard.io/method"
LABEL_ATTEMPT = "tuneguard.io/restart-attempt"  # on the worker Job and its pods: which group restart made them
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "tuneguard-operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# --------------------------------------------------------------------------------------- metrics
# Evaluation figures, as in api.EvalFigures. The trainer exports tuneguard_<figure>{model="base"|"tuned"}
# live; the operator mirrors the latest tuned figures from status as tuneguard_job_<figure>, so
# dashboards keep a job's final figures after its pods are gone.
FIGURES = (
    "known_accuracy",
    "hallucination_rate",
    "new_fact_accuracy",
    "abstention_rate",
    "fabrication_rate",
    "drift_kl",
    "param_drift_l2",
    "eval_loss",
)
JOB_LABELS = ("job", "namespace", "method")

# Trainer (per worker rank 0, scraped through the PodMonitor):
TRAIN_LOSS = "tuneguard_train_loss"
TRAIN_STEP = "tuneguard_train_step"
TRAIN_TOTAL_STEPS = "tuneguard_train_total_steps"
TRAIN_TOKENS_PER_SECOND = "tuneguard_train_tokens_per_second"
TRAIN_TOKENS = "tuneguard_train_tokens"  # counter: exported as tuneguard_train_tokens_total
TRAIN_LAST_STEP_TIMESTAMP = "tuneguard_train_last_step_timestamp_seconds"
TRAIN_STAGE = "tuneguard_train_stage"  # gauge, extra label `stage`: 1 for the stage running now, 0 for the others
TRIAGE_EXAMPLES = "tuneguard_triage_examples"  # gauge, extra label `category`
EVAL_SET_ACCURACY = "tuneguard_eval_set_accuracy"  # gauge, extra labels `set` (spec.evaluation.sets) and `model`
# spec.evaluation.shifts: accuracy when asked shifted, and the robustness gap (accuracy asked unshifted minus asked
# shifted, on the same facts); extra labels `shift`, `probe` (known | new) and `model`
SHIFT_ACCURACY = "tuneguard_shift_accuracy"
ROBUSTNESS_GAP = "tuneguard_robustness_gap"
LEAKAGE_EXAMPLES = "tuneguard_leakage_examples"  # gauge, extra label `kind`: exact, near, train_duplicates, dropped
GUARDRAIL_BREACHES = "tuneguard_guardrail_breaches"  # counter, extra label `guardrail`


def figure_metric(figure: str) -> str:
    """Trainer gauge for one evaluation figure; extra label model="base"|"tuned"."""
    assert figure in FIGURES, figure
    return f"tuneguard_{figure}"


# Operator (scraped through the ServiceMonitor):
OP_JOBS = "tuneguard_operator_jobs"  # gauge: labels phase, method
OP_LEADER = "tuneguard_operator_leader"  # gauge: 1 while this replica holds the leader Lease
OP_RECONCILE_SECONDS = "tuneguard_operator_reconcile_duration_seconds"  # histogram
OP_RECONCILE_ERRORS = "tuneguard_operator_reconcile_errors"  # counter
OP_GROUP_RESTARTS = "tuneguard_operator_group_restarts"  # counter: labels job, namespace
OP_PODS_FORCE_DELETED = "tuneguard_operator_pods_force_deleted"  # counter: label namespace (lost nodes)
OP_JOB_PHASE = "tuneguard_job_phase"  # gauge 1 for the current phase: labels job, namespace, method, phase
OP_JOB_RESTARTS = "tuneguard_job_restarts"  # gauge: labels job, namespace, method
OP_JOB_PROGRESS = "tuneguard_job_progress_ratio"  # gauge 0..1


def job_figure_metric(figure: str) -> str:
    """Operator gauge mirroring a job's latest tuned figure from status.training.metrics."""
    assert figure in FIGURES, figure
    return f"tuneguard_job_{figure}"
