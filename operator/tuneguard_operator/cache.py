"""The latest version of each object the operator watches (FineTuneJobs, worker Jobs), so a reconcile reads
them without a GET, as controller-runtime's informer cache does (about a fifth of the requests per job).

Fed by the watch events and by the objects the operator's own writes return. A write's answer can arrive
before older watch events still in flight, so an object is only ever replaced by a newer resourceVersion
(etcd's are increasing integers; one that is not an integer replaces unconditionally). An entry is trusted for
MAX_AGE seconds, so an object whose deletion a watch gap never reported is looked up again soon. Objects are
shared, not copied (copies cost the watch thread its time at scale): nothing may change one in place.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

MAX_AGE = 60.0


def _rv(obj: dict) -> Optional[int]:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


class ObjectCache:
    def __init__(self, max_age: float = MAX_AGE, clock=time.monotonic):
        self._objs: dict[tuple[str, str, str], tuple[float, dict]] = {}
        self._lock = threading.Lock()
        self.max_age, self.clock = max_age, clock

    def put(self, kind: str, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        key = (kind, meta.get("namespace"), meta.get("name"))
        with self._lock:
            have = self._objs.get(key)
            new, old = _rv(obj), _rv(have[1]) if have else None
            if have and new is not None and old is not None and new < old:
                return  # an older event that arrived after a newer write's answer
            self._objs[key] = (self.clock(), obj)

    def drop(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._objs.pop((kind, namespace, name), None)

    def get(self, kind: str, namespace: str, name: str) -> Optional[dict]:
        """The latest version (read-only), or None when not cached (or cached too long ago): then GET it."""
        with self._lock:
            hit = self._objs.get((kind, namespace, name))
            if hit is None or self.clock() - hit[0] > self.max_age:
                return None
            return hit[1]
