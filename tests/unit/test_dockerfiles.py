"""What can be checked of the two images without a container engine.

Both install the project through the same pyproject extras the tests use, under constraints.txt; base
images are pinned to exact tags; the final stage runs as a non-root user; entrypoints are real
`tuneguard` subcommands; the operator image has a HEALTHCHECK on the health port the chart probes.
The Dockerfiles are read with dockerfile-parse (instructions, stages, build-arg substitution in FROM).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from dockerfile_parse.parser import image_from

from tuneguard.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass
class Stage:
    base: str  # the image or earlier stage it starts FROM, build args substituted
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, value), comments dropped


def parse(path: Path, **build_args: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (overridden by build_args) and stages, as dockerfile-parse reads them: line
    continuations joined, `${ARG}` in FROM substituted as a build would."""
    dockerfile = DockerfileParser(str(path), build_args=build_args)
    structure = dockerfile.structure
    first = next(i for i, ins in enumerate(structure) if ins["instruction"] == "FROM")
    assert {ins["instruction"] for ins in structure[:first]} <= {"ARG", "COMMENT"}, f"{path}: only ARGs before FROM"
    bases = iter(dockerfile.parent_images)  # one per FROM
    stages: list[Stage] = []
    for ins in structure[first:]:
        if ins["instruction"] == "FROM":
            stages.append(Stage(next(bases), image_from(ins["value"])[1]))
        elif ins["instruction"] != "COMMENT":
            stages[-1].instructions.append((ins["instruction"], ins["value"]))
    global_args = dockerfile.context_structure[first - 1].args if first else {}
    return dict(global_args), stages


def _json_or_shell(rest: str) -> list[str]:
    rest = rest.strip()
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def _subcommands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


IMAGES = {
    "operator": (ROOT / "Dockerfile", "operator", "kopf", "torch"),
    "trainer": (ROOT / "trainer_image" / "Dockerfile", "trainer", "deepspeed", "kopf"),
}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_images_are_pinned(image):
    path = IMAGES[image][0]
    _, stages = parse(path)
    names = {s.name for s in stages if s.name}
    for s in stages:
        if s.base in names:
            continue
        assert ":" in s.base and not s.base.endswith((":latest", ":stable")), f"{path}: {s.base} is not pinned"
        tag = s.base.rsplit(":", 1)[1]
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{path}: {s.base}: pin an exact version tag"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_installs_through_the_pyproject_extra_with_constraints(image):
    path, extra, must, must_not = IMAGES[image]
    assert extra in PYPROJECT["project"]["optional-dependencies"], f"pyproject has no extra {extra!r}"
    _, stages = parse(path)
    runs = " ".join(rest for s in stages for op, rest in s.instructions if op == "RUN")
    installs = re.findall(r"pip install ([^&;]*)", runs)
    assert any(f'".[{extra}]"' in i and "-c constraints.txt" in i for i in installs), installs
    for i in installs:  # nothing installed around the pinned constraints
        assert "-c constraints.txt" in i, i
    deps = " ".join(PYPROJECT["project"]["optional-dependencies"][extra])
    assert must in deps and must_not not in deps
    copies = " ".join(rest for s in stages for op, rest in s.instructions if op == "COPY")
    for f in ("pyproject.toml", "constraints.txt"):
        assert f in copies
        assert (ROOT / f).exists()
    # every file the build COPYs from the context exists (README.md is the pyproject's readme)
    for op_rest in (rest for s in stages for op, rest in s.instructions if op == "COPY" and "--from" not in rest):
        for src in op_rest.split()[:-1]:
            assert (ROOT / src.rstrip("/")).exists(), f"{path}: COPY {src}: no such file in the build context"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_runs_as_non_root(image):
    path = IMAGES[image][0]
    _, stages = parse(path)
    users = [rest for op, rest in stages[-1].instructions if op == "USER"]
    assert users, f"{path}: the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{path}: runs as root"
    assert user.isdigit(), f"{path}: use a numeric USER so runAsNonRoot can verify it"


def test_operator_entrypoint_health_and_ports_match_the_chart():
    _, stages = parse(ROOT / "Dockerfile")
    ins = dict(stages[-1].instructions)
    entry = _json_or_shell(ins["ENTRYPOINT"])
    assert entry[:2] == ["tuneguard", "operator"] and "operator" in _subcommands()
    cmd = _json_or_shell(ins["CMD"])
    parser = build_parser()
    args = parser.parse_args(entry[1:] + cmd)  # the CLI accepts the image's default arguments
    assert args.all_namespaces and args.metrics_port == 8080 and args.health_port == 8081
    assert "HEALTHCHECK" in ins and f":{args.health_port}/healthz" in ins["HEALTHCHECK"]
    import yaml
    values = yaml.safe_load((ROOT / "charts" / "tuneguard" / "values.yaml").read_text())
    assert values["operator"]["healthPort"] == args.health_port
    assert values["operator"]["metricsPort"] == args.metrics_port
    user = [rest for op, rest in stages[-1].instructions if op == "USER"][-1].split(":")[0]
    assert int(user) == values["operator"]["podSecurityContext"]["runAsUser"]
    copies = " ".join(rest for s in stages for op, rest in s.instructions if op == "COPY")
    assert "trainer_image" not in copies, "the operator image must not ship the trainer"


def test_trainer_entrypoint_is_the_worker_command_the_operator_runs():
    from tuneguard import contract
    _, stages = parse(ROOT / "trainer_image" / "Dockerfile")
    ins = dict(stages[-1].instructions)
    entry = _json_or_shell(ins["ENTRYPOINT"]) + _json_or_shell(ins["CMD"])
    assert entry == contract.WORKER_COMMAND
    assert "worker" in _subcommands()
    build_parser().parse_args(entry[1:])
    assert re.search(r"cuda", stages[0].base) and re.search(r"cuda", stages[-1].base)
    assert str(contract.METRICS_PORT) in ins["EXPOSE"] and str(contract.MASTER_PORT) in ins["EXPOSE"]
    # the operator runs workers as this uid (tuneguard_operator.render.RUN_AS_USER)
    user = ins["USER"].split(":")[0]
    try:
        from tuneguard_operator.render import RUN_AS_USER
    except ImportError:
        RUN_AS_USER = 1000
    assert int(user) == RUN_AS_USER
    copies = " ".join(rest for s in stages for op, rest in s.instructions if op == "COPY")
    assert "operator/" not in copies.replace("trainer_image", ""), "the trainer image must not ship the operator"


def test_trainer_flavours_differ_only_in_their_base_stages():
    """One Dockerfile, FLAVOR=cuda (default) or cpu: the per-flavour stages are the build environment
    and the runtime base; the dependencies, the project and the final image are shared, and the CPU
    flavour adds nothing to its base (no compiler: no DeepSpeed op is built for CPU)."""
    path = ROOT / "trainer_image" / "Dockerfile"
    args, stages = parse(path)
    assert args["FLAVOR"] == "cuda"
    by_name = {s.name: s for s in stages if s.name}
    for flavour in ("cuda", "cpu"):
        assert f"build-env-{flavour}" in by_name and f"runtime-{flavour}" in by_name
    assert by_name["build-env-cpu"].instructions == [] and by_name["runtime-cpu"].instructions == []
    assert "DS_BUILD_FUSED_ADAM=1" in " ".join(r for _, r in by_name["build-env-cuda"].instructions)
    # FLAVOR picks the build environment the shared deps stage starts from, and the runtime base of the final image
    for flavour in ("cuda", "cpu"):
        _, built = parse(path, FLAVOR=flavour)
        assert {s.name: s.base for s in built}["deps"] == f"build-env-{flavour}"
        assert built[-1].base == f"runtime-{flavour}"
    # Layer order: the dependencies are installed before any source is copied, so a source change
    # rebuilds only the project's own layers.
    deps = [op + " " + r for op, r in by_name["deps"].instructions]
    assert not any(op.startswith("COPY") and ("tuneguard/" in op or "trainer_image/" in op) for op in deps)
    copies = [r for op, r in stages[-1].instructions if op == "COPY"]
    venv = next(i for i, c in enumerate(copies) if c.startswith("--from=deps /opt/venv"))
    project = next(i for i, c in enumerate(copies) if c.startswith("--from=build"))
    assert venv < project == len(copies) - 1
