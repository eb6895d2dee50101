"""An in-memory stand-in for the REST calls of tuneguard.kube.Kube (unit tests only).

It keeps objects by path, assigns uids and resourceVersions, answers 404/409 like the API server,
applies JSON merge patches, and records every call so tests can assert what the reconciler did.
The real API server is exercised by tests/e2e.
"""

from __future__ import annotations

import copy
import itertools
import uuid

from tuneguard.kube import ApiError


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class FakeKube:
    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self._rv = itertools.count(1)

    def _bump(self, obj):
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._rv))

    def get(self, p):
        self.calls.append(("GET", p))
        obj = self.objects.get(p)
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, p, label_selector):
        self.calls.append(("LIST", p))
        want = dict(kv.split("=", 1) for kv in label_selector.split(","))
        return [copy.deepcopy(o) for k, o in self.objects.items() if k.rsplit("/", 1)[0] == p
                and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in want.items())]

    def create(self, p, body):
        self.calls.append(("POST", p))
        meta = body["metadata"]
        name = meta.get("name") or f"{meta['generateName']}{next(self._rv)}"
        full = f"{p}/{name}"
        if full in self.objects:
            raise ApiError(409, "Conflict", {"message": f"{name} already exists"})
        obj = copy.deepcopy(body)
        obj["metadata"]["name"] = name
        obj["metadata"].setdefault("uid", str(uuid.uuid4()))
        obj["metadata"].setdefault("generation", 1)
        self._bump(obj)
        self.objects[full] = obj
        return copy.deepcopy(obj)

    def patch(self, p, body):
        self.calls.append(("PATCH", p))
        base = p[: -len("/status")] if p.endswith("/status") else p
        if base not in self.objects:
            raise ApiError(404, "Not Found", {"message": "not found"})
        obj = self.objects[base]
        if p.endswith("/status"):
            obj["status"] = merge_patch(obj.get("status") or {}, body.get("status") or {})
        else:
            before = copy.deepcopy(obj.get("spec"))
            new = merge_patch(obj, body)
            if new.get("spec") != before:
                new["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
            self.objects[base] = obj = new
        self._bump(obj)
        return copy.deepcopy(obj)

    def delete(self, p, propagation="Background", uid=None, grace_period=None):
        self.calls.append(("DELETE", p) if grace_period is None else ("DELETE", p, grace_period))
        self.objects.pop(p, None)

    # helpers for tests
    def writes(self):
        return [c for c in self.calls if c[0] not in ("GET", "LIST")]

    def find(self, suffix):
        return [o for p, o in self.objects.items() if p.endswith(suffix)]
