"""The FineTuneJob API (tuneguard.io/v1alpha1): the one source of truth.

The CRD under crds/ is generated from these models (see tuneguard.crd), the CLI validates manifests
with them offline, the operator renders children from them and the trainer validates its mounted
config with them. Field names are the wire names (camelCase) so that a reader of a manifest and a
reader of this file see the same words.

Cross-field rules are declared once per model in ``__rules__``: each has the CEL expression the API
server evaluates and the Python check the offline validator runs, side by side, with one message.
Transition rules (immutability) only exist server-side, since offline there is no old object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

GROUP = "tuneguard.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]

BUNDLED_MODELS = ("smollm2-135m-instruct", "gemma3-270m")
BUNDLED_DATASETS = ("facts", "facts-small")

# RE2-compatible (the API server) and Python-compatible (the offline validator) at once. Not \s: RE2's is ASCII
# whitespace, pydantic's (Rust regex) is Unicode's, so a non-breaking space would pass one and fail the other.
_NO_SPACE = r"[^\t\n\f\r ]"
MODEL_URI_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/" + _NO_SPACE + r"*"
    r"|bundled://(" + "|".join(BUNDLED_MODELS) + r")"
    r"|/" + _NO_SPACE + r"*)$"
)
DATA_URI_PATTERN = (
    r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/" + _NO_SPACE + r"+"
    r"|bundled://(" + "|".join(BUNDLED_DATASETS) + r")"
    r"|/" + _NO_SPACE + r"+|[A-Za-z0-9._]" + _NO_SPACE + r"*)$"
)
OUTPUT_URI_PATTERN = (r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/" + _NO_SPACE + r"*)?|/" + _NO_SPACE + r"*"
                      r"|[A-Za-z0-9._]" + _NO_SPACE + r"*)$")
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"  # object names

# What to write instead, for messages about a pattern mismatch.
PATTERN_HINTS = {
    MODEL_URI_PATTERN: "write hf://org/name[@revision], pvc://claim/path, /dir/in/image or "
    + " or ".join(f"bundled://{m}" for m in BUNDLED_MODELS),
    DATA_URI_PATTERN: "write pvc://claim/file.jsonl, a path, or " + " or ".join(f"bundled://{d}" for d in BUNDLED_DATASETS),
    OUTPUT_URI_PATTERN: "write pvc://claim[/path] or a directory path",
    DNS_LABEL_PATTERN: "use lower-case letters, digits and '-', starting and ending with a letter or digit",
}


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: one message, a CEL expression for the API server, a check for Python.

    ``check`` is None for transition rules (they need the old object, so only the server runs them).
    ``field`` is the path (relative to the model) the message points at.
    """

    cel: str
    message: str
    field: str
    check: Optional[Callable[[Any], bool]] = None


_ACRONYMS = {"kl": "KL"}  # Kubernetes style keeps acronyms upper-case (podCIDR, driftKL)


def wire_name(name: str) -> str:
    """A Python field name as the API spells it (camelCase): every model's alias, and the status keys."""
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(_ACRONYMS.get(part, part.title()) for part in rest)


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields rejected."""

    # strict: no coercion ("8" is not 8, 1 is not true, 2.0 is not an integer), as the API server's schema
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        alias_generator=wire_name,
        populate_by_name=True,
        validate_default=True,
    )
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self):
        for rule in self.__rules__:
            if rule.check is not None and not rule.check(self):
                raise RuleViolation(rule)
        return self

    def wire(self) -> dict:
        """The object as it appears in a manifest (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class RuleViolation(ValueError):
    def __init__(self, rule: Rule):
        super().__init__(rule.message)
        self.rule = rule


def _immutable(field: str, what: str) -> Rule:
    return Rule(
        cel=f"self{field} == oldSelf{field}",
        message=f"{what} is immutable once the job exists; delete and re-create the FineTuneJob to change it",
        field=field,
    )


# --------------------------------------------------------------------------------------------- spec


class SecretKeyRef(ApiModel):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253,
                      description="Name of a Secret in the job's namespace.")
    key: str = Field("HF_TOKEN", min_length=1, description="Key in the Secret holding the token.")


class ModelSpec(ApiModel):
    """The base model to fine-tune."""

    uri: str = Field(
        pattern=MODEL_URI_PATTERN,
        description=(
            "Where the base model comes from: hf://org/name[@revision] (Hugging Face hub), "
            "pvc://claim/path (a directory on a PersistentVolumeClaim), /absolute/dir (a directory "
            "inside the trainer image), or bundled://smollm2-135m-instruct | bundled://gemma3-270m."
        ),
    )
    credentials_secret: Optional[SecretKeyRef] = Field(
        None, description="Secret with a hub token, exposed to the trainer as HF_TOKEN."
    )

    __rules__ = (
        Rule(
            cel="!has(self.credentialsSecret) || self.uri.startsWith('hf://')",
            message="credentialsSecret is only used with hf:// models; remove it or use an hf:// uri",
            field=".credentialsSecret",
            check=lambda m: m.credentials_secret is None or m.uri.startswith("hf://"),
        ),
    )


class ProbeSets(ApiModel):
    known: Optional[str] = Field(
        None, pattern=DATA_URI_PATTERN,
        description="Held-out facts to test forgetting; triaged, only Known ones (HighlyKnown, MaybeKnown) are "
        "used. Default: split off the training file after triage.",
    )
    unknown: Optional[str] = Field(
        None, pattern=DATA_URI_PATTERN,
        description="Held-out facts the base model does not know, to measure fabrication and abstention. "
        "Default: split off the training file after triage.",
    )


class DatasetSpec(ApiModel):
    train: str = Field(
        pattern=DATA_URI_PATTERN,
        description="Training data, JSONL: bundled://facts, pvc://claim/path.jsonl, or a path in the image.",
    )
    format: Literal["qa", "chat"] = Field(
        "qa",
        description="qa: one {question, answers[]} object per line; chat: one {messages[]} object per line "
        "(the last assistant message is the target).",
    )
    probes: ProbeSets = Field(default_factory=ProbeSets, description="Held-out probe sets.")
    holdout_fraction: float = Field(
        0.25, ge=0.0, le=0.9,
        description="Share of each triage category held out as probes when no probe file is given.",
    )


class SelfDistillSpec(ApiModel):
    lambda_: float = Field(1.0, alias="lambda", ge=0.0, le=100.0,
                           description="Weight of the KL term: L = CE + lambda * tau^2 * KL(teacher || student).")
    temperature: float = Field(0.5, gt=0.0, le=10.0, description="Softmax temperature tau of the KL term.")
    teacher: Literal["format-stage", "base"] = Field(
        "format-stage",
        description="The frozen teacher. format-stage: the snapshot after the format stage (the paper's "
        "procedure; needs formatStage.enabled). base: the base model before any tuning, which a chat model asked "
        "zero-shot answers in sentences, so the KL fights the targets' short format.",
    )
    teacher_prompt: Literal["zero-shot", "few-shot"] = Field(
        "zero-shot",
        description="What the teacher is asked. zero-shot: the student's own closed-book prompt. few-shot: the "
        "evaluation's few-shot prompt (triage.shots exemplars of the fact's relation), so that the teacher's "
        "distribution is over short answers like the targets, not over the full sentence a chat model opens "
        "with zero-shot; the student still trains on its own prompt. The teacher pass is longer (cacheTopK "
        "pays it once).",
    )
    cache_top_k: int = Field(
        0, ge=0, le=1024,
        description="Cache the teacher's top-k logits from the first epoch so later epochs skip the teacher "
        "forward pass (0 = always run the teacher; exact).",
    )


def _patterns_listed(attr: str, example: str) -> Rule:
    """A list of patterns, when given, holds at least one and none is empty."""
    wire = wire_name(attr)
    return Rule(
        cel=f"!has(self.{wire}) || (size(self.{wire}) > 0 && self.{wire}.all(p, size(p) > 0))",
        message=f"{wire} must list at least one non-empty pattern, e.g. {example}",
        field=f".{wire}",
        check=lambda m: getattr(m, attr) is None or (len(getattr(m, attr)) > 0 and all(getattr(m, attr))),
    )


def _check_regexes(field: str, patterns: Optional[list[str]]) -> None:
    """Offline only: the API server cannot check a regular expression's syntax."""
    for p in patterns or []:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"{field}: {p!r} is not a valid regular expression ({e})") from e


class FreezeSpec(ApiModel):
    preset: Optional[Literal["attention-only", "mlp-only", "top-layers"]] = Field(
        None,
        description="attention-only: train attention, freeze MLPs and the rest; mlp-only: train MLP blocks; "
        "top-layers: train only the last topLayers decoder layers.",
    )
    top_layers: Optional[int] = Field(None, ge=1, le=1000, description="Number of trained layers for top-layers.")
    trainable_patterns: Optional[list[str]] = Field(
        None,
        description="Regular expressions over parameter names; matching parameters are trained, "
        "all others frozen. Each pattern must match at least one parameter.",
    )

    __rules__ = (
        Rule(
            cel="has(self.preset) != has(self.trainablePatterns)",
            message="freeze needs exactly one of preset or trainablePatterns",
            field=".preset",
            check=lambda f: (f.preset is None) != (f.trainable_patterns is None),
        ),
        _patterns_listed("trainable_patterns", "['self_attn']"),
        Rule(
            cel="has(self.preset) && self.preset == 'top-layers' ? has(self.topLayers) : !has(self.topLayers)",
            message="topLayers is required with preset top-layers and allowed only with it",
            field=".topLayers",
            check=lambda f: (f.top_layers is not None) == (f.preset == "top-layers"),
        ),
    )

    @model_validator(mode="after")
    def _patterns_compile(self):
        _check_regexes("trainablePatterns", self.trainable_patterns)
        return self


ADAPTER_TARGETS = ("attention", "mlp", "all-linear")


class AdapterSpec(ApiModel):
    """A LoRA adapter (Hu et al. 2021) built with the peft library: the fact stage trains low-rank matrices
    beside the frozen weights of the model it starts from (the format-stage snapshot, or the base model),
    instead of the weights themselves. Cheaper, and itself a forgetting mitigation ("LoRA Learns Less and
    Forgets Less", Biderman et al. 2024). The format stage, shared by every method, still trains all weights."""

    type: Literal["lora"] = Field("lora", description="lora: the adapter's matrices train, every base weight is frozen.")
    rank: int = Field(16, ge=1, le=1024, description="Rank r of each adapter's matrices B (out x r) and A (r x in).")
    alpha: float = Field(32.0, gt=0.0, le=4096.0,
                         description="Scaling numerator: the adapter adds (alpha / rank) * B A to the frozen weight.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input while training.")
    targets: Optional[Literal[ADAPTER_TARGETS]] = Field(
        None,
        description="Which linear layers get an adapter: attention (query, key, value, output projections), mlp "
        "(the feed-forward projections) or all-linear (both; never the output head). Default all-linear when "
        "targetPatterns is unset.",
    )
    target_patterns: Optional[list[str]] = Field(
        None,
        description="Regular expressions full-matched against each linear layer's name and its last component "
        "(q_proj and .*\\.q_proj both pick every query projection); each must match at least one linear layer. "
        "Instead of targets.",
    )

    __rules__ = (
        Rule(
            cel="!(has(self.targets) && has(self.targetPatterns))",
            message="adapter takes targets or targetPatterns, not both",
            field=".targetPatterns",
            check=lambda a: a.targets is None or a.target_patterns is None,
        ),
        _patterns_listed("target_patterns", "['q_proj', 'v_proj']"),
    )

    @model_validator(mode="after")
    def _patterns_compile(self):
        _check_regexes("targetPatterns", self.target_patterns)
        return self

    def resolved_targets(self) -> str:
        """The preset in force (all-linear unless targets or targetPatterns says otherwise)."""
        return "patterns" if self.target_patterns else (self.targets or "all-linear")


MethodName = Literal["sft", "self-distill", "freeze"]
METHODS: tuple[str, ...] = get_args(MethodName)


class MethodSpec(ApiModel):
    type: MethodName = Field(
        description="sft: cross-entropy on answer tokens; self-distill: plus a KL term toward a frozen teacher "
        "(the format-stage snapshot by default); freeze: sft on a chosen subset of parameters."
    )
    self_distill: Optional[SelfDistillSpec] = Field(None, description="Settings of self-distill.")
    freeze: Optional[FreezeSpec] = Field(None, description="Which parameters freeze trains.")
    adapter: Optional[AdapterSpec] = Field(
        None, description="Train a LoRA adapter instead of the weights (sft and self-distill). With self-distill "
        "and the format-stage teacher, the teacher is the same model with the adapter switched off: no copy.")

    __rules__ = (
        Rule(
            cel="!has(self.selfDistill) || self.type == 'self-distill'",
            message="selfDistill settings are allowed only with type: self-distill; remove them or change the type",
            field=".selfDistill",
            check=lambda m: m.self_distill is None or m.type == "self-distill",
        ),
        Rule(
            cel="!has(self.freeze) || self.type == 'freeze'",
            message="freeze settings are allowed only with type: freeze; remove them or change the type",
            field=".freeze",
            check=lambda m: m.freeze is None or m.type == "freeze",
        ),
        Rule(
            cel="self.type != 'freeze' || has(self.freeze)",
            message="type: freeze needs a freeze block, e.g. freeze: {preset: attention-only}",
            field=".freeze",
            check=lambda m: m.type != "freeze" or m.freeze is not None,
        ),
        Rule(
            cel="!has(self.adapter) || self.type != 'freeze'",
            message="adapter is not allowed with type: freeze: freeze trains a chosen subset of the weights "
            "themselves, an adapter trains new low-rank weights beside all of them frozen; use type: sft with "
            "adapter.targets: attention for LoRA's counterpart of attention-only freeze",
            field=".adapter",
            check=lambda m: m.adapter is None or m.type != "freeze",
        ),
    )

    def distill(self) -> SelfDistillSpec:
        """Self-distill settings with defaults filled in (only meaningful for type self-distill)."""
        return self.self_distill or SelfDistillSpec()


class TriageSpec(ApiModel):
    """SliCK knowledge triage (Gekhman et al. 2024) of the training facts by the base model."""

    enabled: bool = Field(True, description="Triage the training data before training.")
    prompts: int = Field(4, ge=1, le=32, description="Few-shot prompts per fact (N_ex in the paper: 10).")
    shots: int = Field(4, ge=0, le=16, description="Exemplars per few-shot prompt, from the same relation.")
    samples: int = Field(4, ge=0, le=64, description="Temperature samples per prompt for P(T>0) (paper: 16).")
    temperature: float = Field(0.5, gt=0.0, le=2.0, description="Sampling temperature for P(T>0).")
    unknown_policy: Literal["keep", "drop", "abstain"] = Field(
        "keep",
        description="What to do with Unknown training facts: keep them, drop them, or relabel the target "
        "to the abstention text.",
    )
    abstention_text: str = Field("I don't know", min_length=1, description="Target for relabelled Unknown facts.")


class FormatStageSpec(ApiModel):
    """The first stage (Kaplan, Gekhman et al.): SFT on the training facts the base model already knows, so
    the model learns the targets' answer format before it meets new facts. Its snapshot is the fact stage's
    starting point, the self-distill teacher and the reference every figure is measured against."""

    enabled: bool = Field(
        True,
        description="Run the format stage (needs triage: it trains only the facts triage labels HighlyKnown or "
        "MaybeKnown). Off: the fact stage starts from the base model, which is also the reference.",
    )
    epochs: float = Field(1.0, gt=0.0, le=100.0,
                          description="Passes over the Known training facts (ignored when maxSteps is set).")
    max_steps: Optional[int] = Field(None, ge=1, le=1_000_000, description="Optimizer steps; overrides epochs.")
    learning_rate: Optional[float] = Field(
        None, gt=0.0, le=1.0, description="Peak learning rate (default: training.learningRate); cosine decay, no warm-up.")


class LeakageSpec(ApiModel):
    """Probe questions that duplicate training questions, checked on the splits before any training: a
    normalised exact match, or a near duplicate (weighted token-set similarity) that shares an accepted
    answer. Duplicates inside the training data are reported the same way."""

    policy: Literal["refuse", "drop", "warn"] = Field(
        "drop",
        description="refuse: fail the job before training, listing the leaked pairs; drop: remove the leaked "
        "probe examples (a leaked probe measures memory, not knowledge) and train; warn: log them and keep them.",
    )
    similarity: float = Field(
        0.8, gt=0.0, le=1.0,
        description="Near-duplicate threshold: IDF-weighted Jaccard of the two questions' normalised word sets "
        "(1.0: the same words). Lower catches more paraphrases and more look-alike questions.",
    )


class EarlyStoppingSpec(ApiModel):
    enabled: bool = Field(False, description="Stop when the monitored figure has not improved for `patience` evaluations.")
    metric: Literal["known_accuracy", "new_fact_accuracy", "eval_loss"] = Field(
        "eval_loss", description="Figure to monitor (eval_loss on the new facts is minimised; accuracies maximised)."
    )
    patience: int = Field(3, ge=1, le=100, description="Evaluations without improvement before stopping.")


class TrainingSpec(ApiModel):
    epochs: float = Field(3.0, gt=0.0, le=1000.0, description="Passes over the training data (ignored when maxSteps is set).")
    max_steps: Optional[int] = Field(None, ge=1, le=10_000_000, description="Optimizer steps; overrides epochs.")
    learning_rate: float = Field(1e-5, gt=0.0, le=1.0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(8, ge=1, le=4096, description="Micro-batch size per GPU (per process).")
    gradient_accumulation: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(256, ge=16, le=131072, description="Tokens per example; longer ones are truncated from the left.")
    warmup_steps: int = Field(0, ge=0, le=10_000_000, description="Linear warm-up steps, then cosine decay.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for data order, sampling and initialisation.")
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec, description="Early stopping.")
    checkpoint_interval: int = Field(0, ge=0, le=10_000_000, description="Save a resumable checkpoint every N steps (0 = at each evaluation).")


class DeepSpeedSpec(ApiModel):
    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage 0-3.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp32 on CPU."
    )
    offload_optimizer: bool = Field(False, description="Keep optimizer states in CPU memory (ZeRO 1-3).")
    config: Optional[dict[str, Any]] = Field(
        None,
        description="Raw DeepSpeed config merged over the generated one (expert use).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    __rules__ = (
        Rule(
            cel="!self.offloadOptimizer || self.zeroStage >= 1",
            message="offloadOptimizer needs zeroStage 1, 2 or 3",
            field=".offloadOptimizer",
            check=lambda d: not d.offload_optimizer or d.zero_stage >= 1,
        ),
    )


class EvaluationSetSpec(ApiModel):
    """A team's own questions (the ones its users really ask), scored and reported on their own at every
    evaluation, beside the probes triage builds."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=40,
                      description="Names the set in the report, status.training.sets and the metrics' `set` label.")
    file: str = Field(pattern=DATA_URI_PATTERN,
                      description="JSONL in datasets.format (qa: question, answers[, relation]); checked for leakage "
                      "against the training questions like the probes (spec.leakage).")


class EvaluationSpec(ApiModel):
    interval_steps: int = Field(50, ge=1, le=10_000_000, description="Evaluate every N optimizer steps (and at the end).")
    max_probe_size: int = Field(200, ge=1, le=100_000, description="Cap on each probe set's size.")
    drift_prompts: Optional[str] = Field(
        None, pattern=DATA_URI_PATTERN,
        description="JSONL of {prompt} lines for drift KL; default: the known probe's questions.",
    )
    shifts: list[Literal["paraphrase", "noise", "format"]] = Field(
        ["paraphrase", "noise", "format"], max_length=3,
        description="Shift tests at every evaluation: the known probe and the new facts also asked as a paraphrase "
        "(the fact's other templates), with seeded noise (a typo, lower case or extra words), and in the other prompt "
        "format (zero-shot if few-shot, and the reverse); each gives an accuracy and a robustness gap (trained form "
        "minus shifted). [] turns them off.")
    shift_probe_size: int = Field(48, ge=1, le=100_000,
                                  description="Facts of each probe (known, new) asked under each shift.")
    sets: Optional[list[EvaluationSetSpec]] = Field(
        None, max_length=16,
        description="Your own evaluation sets: each question asked like the probes (few-shot with its relation's "
        "exemplars when it names one the training data has, else zero-shot) and reported as accuracy, abstention and "
        "wrong answers per set, for the base model, the reference and every evaluation.")

    __rules__ = (
        Rule(
            cel="!has(self.shifts) || self.shifts.all(s, self.shifts.exists_one(t, t == s))",
            message="each shift may be listed once",
            field=".shifts",
            check=lambda e: len(set(e.shifts)) == len(e.shifts),
        ),
        Rule(
            cel="!has(self.sets) || self.sets.all(s, self.sets.exists_one(t, t.name == s.name))",
            message="every evaluation set needs a name of its own",
            field=".sets",
            check=lambda e: e.sets is None or len({s.name for s in e.sets}) == len(e.sets),
        ),
    )


class GuardrailSpec(ApiModel):
    """Budgets checked at every evaluation. Editable while the job runs."""

    max_hallucination_increase: Optional[float] = Field(
        None, ge=0.0, le=1.0,
        description="Largest allowed rise of hallucination rate over the base model (absolute, 0.05 = 5 points).",
    )
    max_drift_kl: Optional[float] = Field(None, gt=0.0, description="Largest allowed drift KL (nats/token).")
    max_robustness_gap_increase: Optional[float] = Field(
        None, ge=0.0, le=1.0,
        description="Largest allowed rise of the known probe's robustness gap (accuracy asked unshifted minus asked "
        "shifted, spec.evaluation.shifts) over the reference model's, at any shift (absolute, 0.1 = 10 points).")
    action: Literal["warn", "stop", "rollback"] = Field(
        "warn",
        description="warn: record and continue; stop: end training and keep the best checkpoint; rollback: "
        "restore the best checkpoint within budget and end training.",
    )


class Toleration(ApiModel):
    model_config = ConfigDict(extra="forbid", alias_generator=wire_name, populate_by_name=True)
    key: Optional[str] = None
    operator: Optional[Literal["Exists", "Equal"]] = None
    value: Optional[str] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = None


# The launch contract Tuneguard sets on every worker (the operator the topology, the worker torch's names from
# it); spec.resources.env may not override it.
RESERVED_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NNODES", "NPROC_PER_NODE", "NODE_RANK", "RANK",
                "LOCAL_RANK", "HF_TOKEN")


class EnvVar(ApiModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128, description="Variable name.")
    value: str = Field("", max_length=4096, description="Value.")


class ResourceSpec(ApiModel):
    workers: int = Field(1, ge=1, le=1024, description="Worker pods (nodes); rank 0 is worker 0.")
    gpus_per_worker: int = Field(1, ge=0, le=16, description="nvidia.com/gpu per worker; 0 runs on CPU.")
    image: str = Field("ghcr.io/tuneguard/trainer:0.1.0", min_length=1, description="Trainer image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent")
    cpu: str = Field("4", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request and limit per worker.")
    memory: str = Field("32Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$",
                        description="Memory request and limit per worker.")
    shm_size: str = Field("8Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$", description="Size of the memory-backed /dev/shm.")
    node_selector: Optional[dict[str, str]] = Field(None, description="Node labels the workers must match.")
    tolerations: Optional[list[Toleration]] = Field(None, description="Tolerations of the worker pods.")
    priority_class_name: Optional[str] = Field(None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253,
                                               description="PriorityClass of the worker pods.")
    scheduler_name: Optional[str] = Field(None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253,
                                          description="Scheduler, e.g. volcano for gang scheduling.")
    queue_name: Optional[str] = Field(None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=63,
                                      description="Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label.")
    env: Optional[list[EnvVar]] = Field(
        None, max_length=64,
        description="Extra environment of the workers, e.g. NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_DEBUG=INFO. "
        "Overrides the operator's defaults (NCCL_DEBUG) but not the launch variables ("
        + ", ".join(RESERVED_ENV) + ", TUNEGUARD_*). Takes effect at the next (re)start of the workers.",
    )

    # Placement (selector, tolerations, queue) stays editable, as Kueue expects of suspended jobs.
    __rules__ = (
        Rule(
            cel="!has(self.env) || self.env.all(e, !(e.name in " + str(list(RESERVED_ENV)).replace("'", '"')
            + ") && !e.name.startsWith('TUNEGUARD_'))",
            message="env may not set the launch variables Tuneguard sets (" + ", ".join(RESERVED_ENV)
            + ", TUNEGUARD_*); remove them",
            field=".env",
            check=lambda r: not r.env or all(e.name not in RESERVED_ENV and not e.name.startswith("TUNEGUARD_")
                                             for e in r.env),
        ),
        _immutable(".workers", "spec.resources.workers"),
        _immutable(".gpusPerWorker", "spec.resources.gpusPerWorker"),
    )


class OutputSpec(ApiModel):
    uri: Optional[str] = Field(
        None, pattern=OUTPUT_URI_PATTERN,
        description="Where checkpoints and reports go: pvc://claim[/path] in a cluster, a directory locally. "
        "Default: an emptyDir (lost with the pods).",
    )


class RunPolicy(ApiModel):
    backoff_limit: int = Field(3, ge=0, le=100, description="Group restarts allowed before the job fails.")
    active_deadline_seconds: Optional[int] = Field(None, ge=1, le=10**10, description="Fail with DeadlineExceeded after this long.")
    ttl_seconds_after_finished: Optional[int] = Field(None, ge=0, le=10**10, description="Delete the job this long after it ends.")
    suspend: bool = Field(False, description="Stop all workers (the job resumes from its checkpoint when unset).")
    force_delete_after_seconds: int = Field(
        60, ge=0, le=86400,
        description="A worker pod still Terminating this long after its grace period ended, on a node that is "
        "NotReady or gone (no kubelet is left to confirm it stopped), is force-deleted, and a running group "
        "restarts without spending backoffLimit, so a lost node never stalls the job. At most a day.")


class FineTuneJobSpec(ApiModel):
    model: ModelSpec = Field(description="The base model.")
    datasets: DatasetSpec = Field(description="Training and probe data.")
    method: MethodSpec = Field(description="How to fine-tune.")
    triage: TriageSpec = Field(default_factory=TriageSpec, description="Knowledge triage of the training data.")
    format_stage: FormatStageSpec = Field(default_factory=FormatStageSpec,
                                          description="SFT on the Known facts before the method's own stage.")
    leakage: LeakageSpec = Field(default_factory=LeakageSpec,
                                 description="Probe questions that duplicate training questions.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed engine settings.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="What to measure and how often.")
    guardrails: GuardrailSpec = Field(default_factory=GuardrailSpec, description="Hallucination and drift budgets.")
    resources: ResourceSpec = Field(default_factory=ResourceSpec, description="Workers, GPUs and placement.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where results are written.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, deadline, cleanup, suspend.")
    plan_only: bool = Field(
        False, strict=True,
        description="Stop after planning: triage the data, check it for duplicates and leaks, write the plan "
        "(category shares, the known-fact loss to expect per method, the recommended method and why) to "
        "status.training.plan and report.json, train nothing and succeed. Every run makes the same plan first.",
    )

    # Fields the trainer reads once at start-up; changing them under a running job would make
    # workers disagree. suspend, guardrails and the run policy's limits stay editable.
    __rules__ = (
        Rule(
            cel="!self.formatStage.enabled || self.triage.enabled",
            message="formatStage trains the facts triage labels Known, so it needs triage.enabled: true; "
            "enable triage or set formatStage.enabled: false",
            field=".formatStage.enabled",
            check=lambda s: not s.format_stage.enabled or s.triage.enabled,
        ),
        Rule(
            cel="self.method.type != 'self-distill' || self.formatStage.enabled || "
            "(has(self.method.selfDistill) && self.method.selfDistill.teacher == 'base')",
            message="selfDistill.teacher format-stage (the default) needs formatStage.enabled: true; "
            "enable the format stage or set method.selfDistill.teacher: base",
            field=".method.selfDistill.teacher",
            check=lambda s: s.method.type != "self-distill" or s.format_stage.enabled
            or s.method.distill().teacher == "base",
        ),
        Rule(
            cel="!has(self.method.adapter) || self.deepspeed.zeroStage <= 2",
            message="method.adapter needs deepspeed.zeroStage 0, 1 or 2: ZeRO-3 would shard the frozen base "
            "weights, and writing the merged model gathers them; an adapter's optimizer state is small enough "
            "for stage 2",
            field=".deepspeed.zeroStage",
            check=lambda s: s.method.adapter is None or s.deepspeed.zero_stage <= 2,
        ),
    ) + tuple(
        _immutable(f".{name}", f"spec.{name}")
        for name in ("model", "datasets", "method", "triage", "formatStage", "leakage", "training", "deepspeed",
                     "evaluation", "output", "planOnly")
    )


# ------------------------------------------------------------------------------------------- status

PHASES = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
# The trainer's stages as status.training.stage and the tuneguard_train_stage gauge show them.
TRAINER_STAGES = ("loading", "triage", "format", "training", "evaluating", "saving", "done")
CONDITION_TYPES = ("Created", "Running", "Restarting", "Succeeded", "Failed", "Suspended", "GuardrailBreached")


class Condition(ApiModel):
    type: str = Field(description="Created, Running, Restarting, Succeeded, Failed, Suspended or GuardrailBreached.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="CamelCase reason, e.g. WorkerFailed, DeadlineExceeded.")
    message: str = ""
    last_transition_time: str = Field(description="RFC 3339 time of the last status change.")
    observed_generation: Optional[int] = None


class WorkerCounts(ApiModel):
    desired: int = 0
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0


class EvalFigures(ApiModel):
    """One evaluation's figures; names match the Prometheus gauges tuneguard_<name>."""

    known_accuracy: Optional[float] = None
    hallucination_rate: Optional[float] = None
    new_fact_accuracy: Optional[float] = None
    abstention_rate: Optional[float] = None
    fabrication_rate: Optional[float] = None
    drift_kl: Optional[float] = None
    param_drift_l2: Optional[float] = None
    eval_loss: Optional[float] = None


class TriageCounts(ApiModel):
    highly_known: int = 0
    maybe_known: int = 0
    weakly_known: int = 0
    unknown: int = 0
    dropped: int = 0
    relabelled: int = 0


class LeakageCounts(ApiModel):
    """What the leakage check found (spec.leakage): leaked probe examples, training duplicates, drops."""

    exact: int = Field(0, description="Probe examples with a normalised exact duplicate among the training questions.")
    near: int = Field(0, description="Probe examples with only near duplicates (sharing an accepted answer).")
    train_duplicates: int = Field(0, description="Training examples that duplicate an earlier training example.")
    dropped: int = Field(0, description="Probe examples removed (policy drop).")


class PlanSummary(ApiModel):
    """The advice made from triage before training; counts: status.training.triage; all of it: report.json."""

    method: Optional[str] = Field(None, description="Recommended method; unset when the plan cannot judge "
                                  "(triage disabled).")
    settings: Optional[str] = Field(None, description="The spec fields to set for it, e.g. "
                                    "'{method: {type: sft}, triage: {unknownPolicy: abstain}}'.")
    rule: str = Field(description="The advice rule that decided, e.g. new-facts-to-learn.")
    reason: str = Field(description="Why, citing the measured evidence.")
    known_share: Optional[float] = Field(None, description="Share of the training file triage labels HighlyKnown "
                                         "or MaybeKnown.")
    unknown_share: Optional[float] = Field(None, description="Share of the training file triage labels Unknown.")


class CheckpointRef(ApiModel):
    step: int
    path: str = Field(description="The best model as a full Hugging Face directory (with an adapter: merged).")
    adapter_path: Optional[str] = Field(None, description="With method.adapter: the adapter alone (peft format).")
    hallucination_rate: Optional[float] = None
    drift_kl: Optional[float] = None


class TrainingStatus(ApiModel):
    """Written by the trainer's rank 0 (through its own ServiceAccount)."""

    stage: Optional[Literal[TRAINER_STAGES]] = Field(
        None, description="What the trainer does now; format is the format stage (SFT on the Known facts).")
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    progress: str = Field("", description="Human-readable progress for printer columns, e.g. '45%'.")
    loss: Optional[float] = None
    tokens_per_second: Optional[float] = None
    base: EvalFigures = Field(default_factory=EvalFigures, description="The base model's figures.")
    reference: Optional[EvalFigures] = Field(
        None, description="The figures after the format stage: what drops and drift are measured against.")
    metrics: EvalFigures = Field(default_factory=EvalFigures, description="The latest evaluation's figures.")
    triage: Optional[TriageCounts] = None
    leakage: Optional[LeakageCounts] = None
    sets: Optional[dict[str, float]] = Field(
        None, description="Accuracy on each of spec.evaluation.sets at the latest evaluation.")
    robustness_gap: Optional[dict[str, float]] = Field(
        None, description="The known probe's robustness gap per shift (spec.evaluation.shifts) at the latest "
        "evaluation: accuracy asked unshifted (as the probe asks it) minus asked shifted, on the same facts.")
    plan: Optional[PlanSummary] = None
    best_checkpoint: Optional[CheckpointRef] = None
    guardrail: Optional[str] = Field(None, description="Last guardrail outcome, e.g. 'breached: stop at step 120'.")
    updated_at: Optional[str] = None


class FineTuneJobStatus(ApiModel):
    phase: Optional[Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]] = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: Optional[int] = None
    workers: WorkerCounts = Field(default_factory=WorkerCounts)
    restarts: int = Field(0, description="Group restarts after a worker failed, counted against runPolicy.backoffLimit.")
    disruptions: int = Field(0, description="Group restarts after a worker was preempted, evicted or drained "
                             "(its DisruptionTarget condition): not counted against backoffLimit.")
    start_time: Optional[str] = None
    completion_time: Optional[str] = None
    reason: Optional[str] = Field(None, description="Why the job is in its phase, one CamelCase word "
                                  "(BackoffLimitExceeded, Queued, WorkersReady, ...): the phase condition's reason.")
    message: Optional[str] = None
    training: TrainingStatus = Field(default_factory=TrainingStatus)


# ----------------------------------------------------------------------------------------- object


class ObjectMeta(BaseModel):
    """The part of metadata the offline validator checks; the rest is passed through."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=52,
                      description="At most 52 characters so that child names (name-worker-N) stay valid labels.")
    namespace: Optional[str] = Field(None, pattern=DNS_LABEL_PATTERN)


class FineTuneJob(ApiModel):
    api_version: Literal["tuneguard.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: Optional[FineTuneJobStatus] = None
