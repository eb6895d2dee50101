"""Chaos that loses nothing: the operator is SIGKILLed at random moments (and restarted) while many jobs go
through create, run, a group restart, suspend and resume, success, failure and TTL clean-up. In the end every
job is in the phase its story says, restart counts are exact, and no child is duplicated or left behind.

TUNEGUARD_CHAOS_JOBS sets the number of jobs (default 20), TUNEGUARD_CHAOS_SEED the kill schedule."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from .harness import OperatorProcess, cpu_job, wait_for
from .test_operator import children, expected_children, reasons

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

JOBS = int(os.environ.get("TUNEGUARD_CHAOS_JOBS", "20"))
SEED = int(os.environ.get("TUNEGUARD_CHAOS_SEED", "0"))
STORIES = ("succeed", "restart", "suspend", "ttl", "fail")


class Chaos:
    """Kills the operator with SIGKILL every 1-5 s (seeded) and starts it again, until stopped."""

    def __init__(self, op: OperatorProcess, seed: int):
        self.op, self.rng, self.kills = op, random.Random(seed), 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.rng.uniform(1.0, 5.0)):
            self.op.stop(kill=True)
            self.kills += 1
            self.op.start(timeout=90)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(120)


def test_random_operator_kills_lose_nothing(cluster, crd_installed, kc, namespace, tmp_path):
    ns = namespace
    story = {f"c{i:02d}": STORIES[i % len(STORIES)] for i in range(JOBS)}
    op = OperatorProcess(cluster, tmp_path).start()
    t0 = time.monotonic()
    try:
        with Chaos(op, SEED) as chaos:
            docs = []
            for name, s in story.items():
                doc = cpu_job(name, workers=2, backoffLimit=0 if s == "fail" else 3,
                              **({"ttlSecondsAfterFinished": 5} if s == "ttl" else {}))
                docs.append(doc)
            kc.apply(docs, ns)

            def all_running(names):
                return all(len(kc.pods(n, ns, running=True)) == 2 for n in names)

            wait_for("every job's two workers to run", lambda: all_running(story), 300, interval=2)
            for name, s in story.items():  # the middle of each story
                if s in ("restart", "fail"):
                    cluster.finish_pod(ns, kc.pods(name, ns, running=True)[0]["metadata"]["name"], exit_code=1)
                elif s == "suspend":
                    kc("patch", "ftj", name, "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
            for name, s in story.items():
                if s == "fail":
                    kc.wait_phase(name, ns, "Failed", 180)
                elif s == "suspend":
                    kc.wait_phase(name, ns, "Suspended", 180)
                    wait_for(f"{name}'s workers to stop", lambda n=name: not kc.pods(n, ns), 180, interval=1)
                    kc("patch", "ftj", name, "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
                elif s == "restart":
                    kc.wait_phase(name, ns, "Running", 180, restarts=1)
            live = [n for n, s in story.items() if s != "fail"]
            wait_for("the restarted and resumed groups to run", lambda: all_running(live), 300, interval=2)
            for name in live:  # every worker of the live jobs exits 0
                for pod in kc.pods(name, ns, running=True):
                    cluster.finish_pod(ns, pod["metadata"]["name"], exit_code=0)
            for name, s in story.items():
                if s == "ttl":
                    wait_for(f"{name} deleted by its TTL", lambda n=name: kc.ftj(n, ns) is None, 180, interval=1)
                elif s != "fail":
                    kc.wait_phase(name, ns, "Succeeded", 180)
        kills = chaos.kills
        # settled, with the operator up: a few resyncs more must change nothing
        if op.proc is None or op.proc.poll() is not None:
            op.start()
        time.sleep(5)
        for name, s in story.items():
            if s == "ttl":
                wait_for(f"{name}'s children collected", lambda n=name: not children(kc, n, ns) and not kc.pods(n, ns),
                         120, interval=1)
                continue
            st = kc.status(name, ns)
            want = {"fail": "Failed"}.get(s, "Succeeded")
            assert st["phase"] == want, (name, s, st)
            assert st["restarts"] == (1 if s == "restart" else 0), (name, s, st)
            assert children(kc, name, ns) == expected_children(name), (name, children(kc, name, ns))
            seen = reasons(kc, name, ns)  # a failure is told once, however often the operator died around it
            assert seen.count("WorkerFailed") == (1 if s == "restart" else 0), (name, s, seen)
            assert seen.count("BackoffLimitExceeded") == (1 if s == "fail" else 0), (name, s, seen)
        print(f"\nchaos: {JOBS} jobs, {kills} operator SIGKILLs in {time.monotonic() - t0:.0f} s, "
              f"every phase, restart count and child as expected")
        assert kills >= 3  # the schedule really killed it, more than once
    finally:
        op.stop()


def test_an_etcd_and_api_server_outage_loses_nothing(cluster, crd_installed, kc, namespace, tmp_path):
    """etcd and then kube-apiserver stopped for 2 s each and started again under running jobs: the operator
    reconnects by itself (it never exits) and the jobs end exactly as without the outage."""
    if cluster.control_plane is None:
        pytest.skip("restarts the control plane the tests start (not a KUBECONFIG cluster)")
    ns = namespace
    op = OperatorProcess(cluster, tmp_path).start()
    try:
        names = [f"o{i}" for i in range(6)]
        kc.apply([cpu_job(n, backoffLimit=3) for n in names], ns)
        wait_for("every job's two workers to run", lambda: all(len(kc.pods(n, ns, running=True)) == 2 for n in names),
                 120, interval=1)
        t0 = time.monotonic()
        cluster.control_plane.restart("etcd", "kube-apiserver", down_seconds=2.0)
        outage = time.monotonic() - t0
        cluster.finish_pod(ns, kc.pods("o0", ns, running=True)[0]["metadata"]["name"], exit_code=1)
        kc.wait_phase("o0", ns, "Running", 120, restarts=1)
        wait_for("o0's new group to run", lambda: len(kc.pods("o0", ns, running=True)) == 2, 120, interval=1)
        for n in names:
            for pod in kc.pods(n, ns, running=True):
                cluster.finish_pod(ns, pod["metadata"]["name"], exit_code=0)
        for n in names:
            st = kc.wait_phase(n, ns, "Succeeded", 120)
            assert st["restarts"] == (1 if n == "o0" else 0), (n, st)
            assert children(kc, n, ns) == expected_children(n)
            assert reasons(kc, n, ns).count("WorkerFailed") == (1 if n == "o0" else 0)
        assert op.proc.poll() is None, "the operator exited during the outage:\n" + op.tail(40)
        print(f"\netcd and kube-apiserver restarted ({outage:.1f} s until /readyz); the operator reconnected")
    finally:
        op.stop()
