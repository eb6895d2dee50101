"""A thin JSON client for the few REST calls the operator and the trainer make: the one way both talk to
the API server.

Plain dicts in and out (no generated model classes: they cost CPU and memory for nothing here), one
exception type with the HTTP status, and paths built in one place. The official client (imported only by
``load_client``) does authentication, TLS and kubeconfig. Tests substitute an in-memory fake with the same
methods.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from tuneguard import api


USER_AGENT = "tuneguard-operator"  # names the caller in the API server's audit log (kopf's watches say kopf/)


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: Any = None):
        self.status = status
        self.reason = reason
        self.body = body
        msg = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"{status} {reason}: {msg or body}")


# (api prefix, plural) for the kinds the operator touches
KINDS = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Event": ("/api/v1", "events"),
    "Pod": ("/api/v1", "pods"),
    "Node": ("/api/v1", "nodes"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Job": ("/apis/batch/v1", "jobs"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "Workload": ("/apis/kueue.x-k8s.io/v1beta2", "workloads"),  # Kueue's, for jobs with a queueName
    api.KIND: (f"/apis/{api.API_VERSION}", api.PLURAL),
}


def path(kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    """The REST path; namespace None for a cluster-scoped kind (Node)."""
    prefix, plural = KINDS[kind]
    p = f"{prefix}/namespaces/{namespace}/{plural}" if namespace is not None else f"{prefix}/{plural}"
    if name:
        p += f"/{name}"
    if sub:
        p += f"/{sub}"
    return p


class Kube:
    """REST calls through the official client's ApiClient (auth, TLS and kubeconfig handled there)."""

    def __init__(self, api_client: Any, timeout: float = 30.0):
        self.client = api_client
        self.timeout = timeout

    def _call(self, method: str, p: str, body: Any = None, query: Optional[dict] = None,
              content_type: str = "application/json") -> Any:
        # param_serialize adds the host, the auth headers (token refresh included) and the query;
        # call_api sends it on the client's TLS-configured pool, JSON-encoding the body.
        headers = {"Accept": "application/json", "Content-Type": content_type}
        _, url, headers, _, _ = self.client.param_serialize(
            method, p, query_params=list((query or {}).items()) or None, header_params=headers,
            auth_settings=["BearerToken"])
        resp = self.client.call_api(method, url, header_params=headers, body=body, _request_timeout=self.timeout)
        data = resp.read()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data.decode(errors="replace")
        if resp.status >= 400:
            raise ApiError(resp.status, resp.reason, parsed)
        return parsed

    def get(self, p: str) -> dict | None:
        """The object, or None when it does not exist."""
        try:
            return self._call("GET", p)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, p: str, label_selector: str) -> list[dict]:
        return (self._call("GET", p, query={"labelSelector": label_selector}) or {}).get("items") or []

    def create(self, p: str, body: dict) -> dict:
        return self._call("POST", p, body)

    def replace(self, p: str, body: dict) -> dict:
        """PUT: with body.metadata.resourceVersion set, 409 Conflict when the object changed since it was read."""
        return self._call("PUT", p, body)

    def patch(self, p: str, body: dict) -> dict:
        return self._call("PATCH", p, body, content_type="application/merge-patch+json")

    def delete(self, p: str, propagation: str = "Background", uid: str | None = None,
               grace_period: int | None = None) -> None:
        """grace_period 0 is a force delete: the object goes without its kubelet's confirmation."""
        opts: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if uid:
            opts["preconditions"] = {"uid": uid}
        if grace_period is not None:
            opts["gracePeriodSeconds"] = grace_period
        try:
            self._call("DELETE", p, opts)
        except ApiError as e:
            if e.status not in (404, 409):  # gone already, or a different object by that name now
                raise


def load_client(connections: int = 8, user_agent: str = USER_AGENT) -> Any:
    """ApiClient from the in-cluster ServiceAccount, or $KUBECONFIG / ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = connections
    api_client = client.ApiClient(cfg)
    api_client.user_agent = user_agent
    return api_client
