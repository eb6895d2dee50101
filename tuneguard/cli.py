"""The `tuneguard` command.

Subcommands import their component lazily, so that the operator image (no torch) and the trainer
image (no kopf) each run the commands they ship with.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneguard import contract


def _cmd_crd(args: argparse.Namespace) -> int:
    from tuneguard.crd import render_crd

    sys.stdout.write(render_crd())
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from tuneguard.validation import InvalidManifest, load_documents, parse_job

    failed = 0
    for path in args.files:
        try:
            docs = load_documents(path)
        except (OSError, InvalidManifest) as e:
            print(f"FAIL {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        for source, doc in docs:
            try:
                job = parse_job(doc, source)
            except InvalidManifest as e:
                print(f"FAIL {e}", file=sys.stderr)
                failed += 1
            else:
                print(f"ok   {source}: FineTuneJob/{job.metadata.name} ({job.spec.method.type})")
    return 1 if failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from tuneguard_trainer.local import run_local

    return run_local(Path(args.job), Path(args.out), device=args.device)


def _cmd_plan(args: argparse.Namespace) -> int:
    from tuneguard_trainer.plan import plan_job

    return plan_job(Path(args.job), device=args.device, out=Path(args.out) if args.out else None, goal=args.goal)


def _cmd_worker(args: argparse.Namespace) -> int:
    from tuneguard_trainer.worker import main as worker_main

    return worker_main(config=Path(args.config), out=Path(args.out) if args.out else None)


def _cmd_operator(args: argparse.Namespace) -> int:
    from tuneguard_operator.main import run_operator

    election = None
    if args.leader_elect:
        import os

        from tuneguard_operator.leader import ElectionSettings

        try:
            election = ElectionSettings(
                namespace=args.leader_election_namespace or os.environ.get("POD_NAMESPACE") or "default",
                name=args.leader_election_id, lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline, retry_period=args.retry_period)
        except ValueError as e:
            print(f"tuneguard operator: {e} (--retry-period, --renew-deadline, --lease-duration)", file=sys.stderr)
            return 2
    return run_operator(namespaces=args.namespace, all_namespaces=args.all_namespaces,
                        metrics_port=args.metrics_port, health_port=args.health_port,
                        log_format=args.log_format, election=election)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneguard", description="Hallucination-aware fine-tuning on Kubernetes.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition")
    s.set_defaults(func=_cmd_crd)

    s = sub.add_parser("validate", help="validate FineTuneJob manifests offline")
    s.add_argument("files", nargs="+", help="YAML files (several documents per file are fine)")
    s.set_defaults(func=_cmd_validate)

    s = sub.add_parser("run", help="run a FineTuneJob on this machine")
    s.add_argument("job", help="FineTuneJob YAML")
    s.add_argument("--out", required=True, help="directory for the report, plots and the best checkpoint")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("plan", help="triage a FineTuneJob's data and advise a method, before any training")
    s.add_argument("job", help="FineTuneJob YAML")
    s.add_argument("--out", default=None, help="directory for plan.json (default: print only)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to triage")
    s.add_argument("--goal", default=None, choices=["learn", "abstain"],
                   help="learn: the new facts must be learned; abstain: they need not be (answer \"I don't "
                   "know\"); default: learn unless spec.triage.unknownPolicy drops or relabels them")
    s.set_defaults(func=_cmd_plan)

    s = sub.add_parser("worker", help="pod entrypoint: one DeepSpeed worker (rank/world from the environment)")
    s.add_argument("--config", default=contract.CONFIG_PATH, help="mounted FineTuneJob")
    s.add_argument("--out", default=None, help="output directory (default: from spec.output)")
    s.set_defaults(func=_cmd_worker)

    s = sub.add_parser("operator", help="run the operator")
    s.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    s.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    s.add_argument("--metrics-port", type=int, default=8080)
    s.add_argument("--health-port", type=int, default=8081)
    s.add_argument("--log-format", choices=["json", "plain"], default="json")
    s.add_argument("--leader-elect", action="store_true",
                   help="reconcile only while holding a coordination.k8s.io Lease (run several replicas)")
    s.add_argument("--leader-election-namespace", default=None, help="the Lease's namespace (default $POD_NAMESPACE)")
    s.add_argument("--leader-election-id", default="tuneguard-operator", help="the Lease's name")
    s.add_argument("--lease-duration", type=float, default=15.0,
                   help="seconds a standby waits after the last renewal it saw before taking over")
    s.add_argument("--renew-deadline", type=float, default=10.0,
                   help="seconds the leader keeps trying to renew before it stops (less than the lease duration)")
    s.add_argument("--retry-period", type=float, default=2.0, help="seconds between attempts to acquire or renew")
    s.set_defaults(func=_cmd_operator)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
