"""Authentication by ServiceAccount token and RBAC authorization: what the operator's own
ServiceAccount will meet. A separate kubectl process acts with a token from `kubectl create token`."""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180, func_only=True)]

ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: configmap-reader}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: robot-reads-configmaps}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-reader}
subjects:
- {kind: ServiceAccount, name: robot}
"""


@pytest.fixture
def robot_kubeconfig(cluster, namespace, tmp_path):
    """A kubeconfig holding only a token of ServiceAccount `robot` (the server and CA of the admin's)."""
    cluster.kubectl("create", "serviceaccount", "robot", "-n", namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=ROLE)
    token = cluster.kubectl("create", "token", "robot", "-n", namespace, "--duration=10m").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "robot",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": "robot", "user": {"token": token}}],
        "contexts": [{"name": "robot", "context": {"cluster": "c", "user": "robot", "namespace": namespace}}],
    }
    path = tmp_path / "robot.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path, token, server


def robot_kubectl(cluster, kubeconfig, *args):
    return cluster.kubectl("--kubeconfig", str(kubeconfig), *args, check=False)


def test_token_identifies_the_service_account(cluster, namespace, robot_kubeconfig):
    kubeconfig, _, _ = robot_kubeconfig
    who = robot_kubectl(cluster, kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert who.returncode == 0, who.stderr
    assert who.stdout == f"system:serviceaccount:{namespace}:robot"


def test_role_allows_and_everything_else_is_forbidden(cluster, namespace, robot_kubeconfig):
    kubeconfig, _, _ = robot_kubeconfig
    cluster.kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=a=b")

    allowed = robot_kubectl(cluster, kubeconfig, "get", "configmap", "settings", "-o", "jsonpath={.data.a}")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == "b"

    for verb_args in (("delete", "configmap", "settings"),              # verb not in the Role
                      ("get", "secrets"),                                # resource not in the Role
                      ("get", "configmaps", "-n", "kube-system")):      # namespace not bound
        denied = robot_kubectl(cluster, kubeconfig, *verb_args)
        assert denied.returncode != 0
        assert "Forbidden" in denied.stderr and f"system:serviceaccount:{namespace}:robot" in denied.stderr, \
            denied.stderr


def test_forbidden_is_http_403(cluster, namespace, robot_kubeconfig):
    _, token, server = robot_kubeconfig
    context = ssl.create_default_context(cadata=base64.b64decode(server["certificate-authority-data"]).decode())

    def status(path: str) -> int:
        request = urllib.request.Request(server["server"] + path, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    assert status(f"/api/v1/namespaces/{namespace}/configmaps") == 200
    assert status(f"/api/v1/namespaces/{namespace}/secrets") == 403
    assert status("/api/v1/nodes") == 403
