"""Least privilege, proven on the real API server: what the chart's RBAC lets the operator do (kubectl auth can-i
--list under its ServiceAccount) is exactly the committed list; every pod the operator renders is admitted in a
namespace that enforces the `restricted` Pod Security Standard; and a Secret's value reaches no log or Event."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.chart_tools import template

from .harness import OperatorProcess, cpu_job, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

PERMISSIONS = Path(__file__).with_name("operator-permissions.txt")


def can_i(kc, namespace: str, account: str) -> list[str]:
    """`kubectl auth can-i --list` as the account, one `resource [names] [verbs]` line each (non-resource URLs and
    self-reviews left out)."""
    out = kc("auth", "can-i", "--list", "-n", namespace, f"--as=system:serviceaccount:{namespace}:{account}").stdout
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.split()
        if not parts or parts[0].startswith(("selfsubject", "[")):
            continue
        names, verbs = re.findall(r"\[[^\]]*\]", line)[-2:]
        rows.append(f"{parts[0]} {names} {verbs}")
    return sorted(rows)


def test_the_operator_can_do_exactly_the_committed_list(kc, namespace):
    """The chart's RBAC (cluster-wide mode, the default) bound to a ServiceAccount in a fresh namespace."""
    objs = [o for o in template(namespace=namespace)
            if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    for o in objs:  # names made unique per test run: ClusterRoles are cluster-scoped
        if o["kind"].startswith("Cluster"):
            o["metadata"]["name"] += f"-{namespace}"
            if o["kind"] == "ClusterRoleBinding":
                o["roleRef"]["name"] += f"-{namespace}"
    kc.apply(objs, namespace)
    kc("create", "serviceaccount", "nobody", "-n", namespace)
    try:
        baseline = set(can_i(kc, namespace, "nobody"))  # what the API server grants every ServiceAccount
        got = [row for row in can_i(kc, namespace, "tuneguard") if row not in baseline]
        want = [line for line in PERMISSIONS.read_text().splitlines() if line and not line.startswith("#")]
        assert got == want, "RBAC changed; if on purpose, update " + PERMISSIONS.name + ":\n" + "\n".join(got)
    finally:
        for o in objs:
            if o["kind"].startswith("Cluster"):
                kc("delete", o["kind"].lower(), o["metadata"]["name"], check=False)


def test_rendered_pods_are_admitted_under_the_restricted_standard_and_secrets_stay_secret(cluster, crd_installed, kc,
                                                                                           namespace, tmp_path):
    kc("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
       "pod-security.kubernetes.io/warn=restricted")
    secret = "hf_do-not-print-this-7Qx2"
    kc("create", "secret", "generic", "hf-token", "-n", namespace, f"--from-literal=HF_TOKEN={secret}")
    op = OperatorProcess(cluster, tmp_path).start()
    try:
        job = cpu_job("restricted")
        job["spec"]["model"] = {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "credentialsSecret": {"name": "hf-token"}}
        kc.apply(job, namespace)
        wait_for("both workers running under enforce=restricted", lambda: len(kc.pods("restricted", namespace, running=True)) == 2,
                 90, describe=lambda: yaml.safe_dump(kc.get("events", "-n", namespace)["items"][-5:]))
        events = kc.get("events", "-n", namespace)["items"]
        assert not [e for e in events if e.get("reason") == "FailedCreate"], events
        pod = kc.pods("restricted", namespace)[0]
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}
        everything = op.log_text() + kc("get", "events", "-n", namespace, "-o", "yaml").stdout + \
            kc("get", "ftj,configmap", "-n", namespace, "-o", "yaml").stdout
        assert secret not in everything  # referenced by name, never read, never copied
    finally:
        op.stop()
