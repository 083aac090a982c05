"""The recipe: one typed tree of dataclasses, loaded from YAML, validated once at the edge.

`Recipe.load("r.yaml", overrides=["train.steps=100"])` reads the file (following `extends:`),
applies `key.path=value` overrides, checks every key and value, and returns the typed tree.
Every error is a `RecipeError` whose one-line message names the file and the key path.
This module must not import torch: the sweep planner and the fitter use it on any machine.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml


class RecipeError(ValueError):
    """A bad recipe: the message is one line naming the file and key path."""


# ----------------------------------------------------------------------------- sections

# Default init gain c of std = c / sqrt(width): 0.5 gives GPT-2's 0.02 at width 768 and ~0.044 at width 128.
INIT_GAIN = 0.5


@dataclass
class MupConfig:
    base_width: int = 256  # width at which muP equals SP (the tuned proxy's d_model)
    base_head_dim: int | None = None  # head dim of the base model; None = base_width / n_heads
    input_mult: float = 1.0  # multiplies the embedding output (tunable)
    output_mult: float = 1.0  # multiplies the readout logits on top of base_width/width
    attn_mult: float = 1.0  # multiplies the 1/d_head attention scale
    # Per-group Adam LR multipliers at the base width (MiniCPM-style tunable constants; tune on the proxy,
    # then transfer: the width/depth rules of mup.py multiply on top of these).
    embed_lr_mult: float = 1.0  # token embedding (input role)
    hidden_lr_mult: float = 1.0  # attention / MLP / expert / router matrices
    readout_lr_mult: float = 1.0  # untied output head
    vector_lr_mult: float = 1.0  # norm gains and biases
    # Depth transfer: residual branches scaled by (base_depth / n_layers)^alpha with the matching LR/eps rules;
    # completep = alpha 1 (Dey et al. 2025), sqrt = alpha 1/2 (MiniCPM scale_depth/sqrt(L), Yang et al. 2023).
    depth_rule: Literal["none", "completep", "sqrt"] = "none"
    base_depth: int | None = None  # n_layers of the tuned proxy; None = n_layers (no depth scaling)


@dataclass
class MoEConfig:
    num_experts: int = 0  # 0 = dense model
    top_k: int = 2
    expert_hidden: int | None = None  # hidden size of each expert; None = dense ffn_hidden
    shared_experts: int = 0
    every: int = 1  # MoE on every k-th layer
    first_dense: int = 0  # the first k layers stay dense
    router: Literal["softmax", "sigmoid"] = "softmax"
    load_balance_coef: float = 0.01  # Switch-style auxiliary loss
    router_z_coef: float = 0.001  # router z-loss (ST-MoE)
    aux_free: bool = False  # DeepSeek-V3 bias balancing, updated outside the gradient
    bias_update_rate: float = 1e-3


@dataclass
class MTPConfig:
    n_future: int = 1  # 1 = plain next-token prediction
    style: Literal["parallel", "sequential"] = "parallel"
    weights: list[float] | None = None  # loss weight per extra depth; None = all 1


@dataclass
class ModelConfig:
    arch: str = "transformer"  # looked up in windtunnel.models.registry
    vocab_size: int = 0  # 0 = take it from the tokenizer
    max_seq_len: int = 0  # RoPE table length; 0 = train.seq_len
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (MHA); 1 = MQA
    ffn_hidden: int | None = None  # None = 8/3 * d_model rounded up to ffn_multiple_of
    ffn_multiple_of: int = 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    tie_embeddings: bool = True
    z_loss: float = 0.0  # coefficient of the logit z-loss (PaLM): z * logsumexp(logits)^2
    init_std: float | None = None  # None = width-aware: INIT_GAIN / sqrt(d_model), at base_width under muP
    loss_chunk: int = 0  # >0: fused linear + cross-entropy over chunks of this many tokens
    parameterization: Literal["sp", "mup"] = "sp"
    mup: MupConfig = field(default_factory=MupConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    mtp: MTPConfig = field(default_factory=MTPConfig)

    # Structure rules: code reads these, never the raw recipe fields they are derived from.
    @property
    def kv_heads(self) -> int:
        """Key/value heads (recipe key n_kv_heads; None = n_heads, MHA)."""
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """Dense SwiGLU hidden width (recipe key ffn_hidden; None = 8/3 d_model rounded up to ffn_multiple_of)."""
        if self.ffn_hidden:
            return self.ffn_hidden
        m = self.ffn_multiple_of
        return m * ((int(8 * self.d_model / 3) + m - 1) // m)

    @property
    def expert_dim(self) -> int:
        """Hidden width of one MoE expert (recipe key moe.expert_hidden; None = ffn_dim)."""
        return self.moe.expert_hidden or self.ffn_dim

    def is_moe_layer(self, layer: int) -> bool:
        """Block `layer` has an MoE feed-forward: after `first_dense` dense blocks, every `every`-th one."""
        m = self.moe
        return m.num_experts > 0 and layer >= m.first_dense and (layer - m.first_dense) % m.every == 0

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.n_layers) if self.is_moe_layer(i)]

    @property
    def mtp_depths(self) -> int:
        """Extra prediction depths (MTP heads) beyond the next token."""
        return self.mtp.n_future - 1

    @property
    def base_init_std(self) -> float:
        """Init std of the embedding/readout and (at the base width) of the hidden matrices: model.init_std,
        or when null INIT_GAIN / sqrt(width), width = d_model (sp) or mup.base_width (mup), so that hidden
        matrices start at std ~ 1/sqrt(fan_in) at every width (muP's rules are its width-scaled form)."""
        if self.init_std is not None:
            return self.init_std
        width = self.mup.base_width if self.parameterization == "mup" else self.d_model
        return INIT_GAIN / math.sqrt(width)

    def dense(self) -> "ModelConfig":
        """The same model without MoE (MTP heads use dense blocks)."""
        return dataclasses.replace(self, moe=dataclasses.replace(self.moe, num_experts=0))


@dataclass
class DataConfig:
    source: Literal["stdlib", "files", "hf"] = "stdlib"
    paths: list[str] = field(default_factory=list)  # files, directories or globs (source=files)
    dataset: str | None = None  # datasets name or local path (source=hf)
    dataset_config: str | None = None
    split: str = "train"
    streaming: bool = False
    text_field: str = "text"
    max_documents: int | None = None  # cap on documents read (quick runs)
    stdlib_tests: bool = True  # include the stdlib's test/ folders in the embedded corpus
    val_fraction: float = 0.01  # held-out documents, chosen by a hash of the document id
    cache_dir: str = ".windtunnel_cache"


@dataclass
class TokenizerConfig:
    kind: Literal["byte", "hf", "bpe"] = "byte"  # bpe = trained locally by `windtunnel tokenizer train`
    path: str | None = None  # HF tokenizer name/path, or where the trained BPE lives
    vocab_size: int = 4096  # target vocabulary for `tokenizer train`


@dataclass
class OptimConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 3e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False  # weight decay on embeddings (off by default, as for norms)
    fused: bool | None = None  # None = fused on GPU, foreach elsewhere


@dataclass
class WSDConfig:
    decay_frac: float = 0.2  # fraction of training spent decaying
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"
    branches: list[int] = field(default_factory=list)  # token counts: decay branches (sweeps)


@dataclass
class PowerConfig:
    a: float = 4.6  # Power Scheduler (Shen et al. 2024): lr = min(lr_max, batch * a * tokens^b)
    b: float = -0.51
    lr_max: float = 0.02
    decay_frac: float = 0.1  # final decay (to min_lr_ratio * lr_max) over this fraction of steps
    decay_shape: Literal["linear", "cosine", "1-sqrt", "exp"] = "exp"


@dataclass
class ScheduleConfig:
    name: Literal["constant", "cosine", "wsd", "power"] = "wsd"
    warmup_frac: float = 0.05
    warmup_steps: int | None = None  # overrides warmup_frac when set
    min_lr_ratio: float = 0.0
    wsd: WSDConfig = field(default_factory=WSDConfig)
    power: PowerConfig = field(default_factory=PowerConfig)


@dataclass
class TrainConfig:
    batch_size: int = 16  # sequences per device per micro-batch
    seq_len: int = 256
    steps: int | None = None  # exactly one of steps / tokens
    tokens: int | None = None
    grad_accum: int = 1
    clip: float = 1.0  # 0 = no clipping
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 0  # 0 = only at the end
    keep_ckpts: int = 2
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU
    compile: bool = False
    nan_policy: Literal["halt", "skip"] = "halt"
    max_skips: int = 10  # with nan_policy=skip: halt after this many consecutive bad steps
    # Loss spikes (spikes.py): a step whose loss is over spike_threshold standard deviations above its
    # running (EMA) mean. off | log (an event row in metrics.jsonl) | skip (also drop that step's update)
    # | rewind (reload the last checkpoint and never train on the spike's data window again). skip and
    # rewind read the loss every step (a host sync per step); more than max_skips skips/rewinds halt.
    spike_policy: Literal["off", "log", "skip", "rewind"] = "off"
    spike_threshold: float = 6.0  # z-score above which a step's loss is a spike
    spike_window: int = 1  # rewind: data steps passed over, from the spike's on
    threads: int | None = None  # torch CPU threads; None = leave torch's default


@dataclass
class LoggingConfig:
    log_every: int = 10
    progress: bool = True
    wandb: bool = False
    wandb_project: str = "windtunnel"
    run_name: str | None = None
    peak_tflops: float | None = None  # None = look up the GPU; needed for MFU elsewhere


@dataclass
class DistributedConfig:
    strategy: Literal["ddp", "deepspeed", "fsdp"] = "ddp"
    zero_stage: int = 0
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    offload_params: Literal["none", "cpu", "nvme"] = "none"
    nvme_path: str | None = None
    activation_checkpointing: Literal["none", "full", "selective"] = "none"  # selective = every other block
    # DeepSpeed overlap/bucket knobs (written into the generated config; see docs/distributed.md)
    overlap_comm: bool = True  # overlap gradient reduction with backward
    contiguous_gradients: bool = True  # copy gradients into one buffer as they are produced
    pin_memory: bool = True  # page-locked host buffers for offload (faster host<->device copies)
    reduce_bucket_size: int | None = None  # elements per reduce/allgather bucket; None = d_model^2
    prefetch_bucket_size: int | None = None  # ZeRO-3 parameter prefetch; None = 0.9 * d_model^2
    sub_group_size: int = 1_000_000_000  # ZeRO-3 optimizer-step chunk (smaller = less host RAM spike)
    reshard_after_forward: bool = True  # FSDP2: free gathered parameters after forward (ZeRO-3-like)


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    out_dir: str | None = None  # run directory; None = runs/<recipe name>

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "Recipe":
        raw = load_yaml_tree(Path(path))
        for item in overrides:
            apply_override(raw, item, source="--set")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>") -> "Recipe":
        recipe = build_dataclass(cls, raw, source, "")
        validate(recipe, source)
        return recipe

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_overrides(self, overrides: list[str]) -> "Recipe":
        """A new recipe with `key.path=value` overrides applied (and validated)."""
        raw = self.to_dict()
        for item in overrides:
            apply_override(raw, item, source="--set")
        return Recipe.from_dict(raw, source="<overrides>")

    # ------------------------------------------------------------------ derived numbers
    @property
    def tokens_per_step_per_rank(self) -> int:
        """Tokens one process trains on per optimizer step (micro-batch x seq_len x grad_accum)."""
        return self.train.batch_size * self.train.seq_len * self.train.grad_accum

    def global_tokens_per_step(self, world_size: int = 1) -> int:
        """Tokens per optimizer step over all `world_size` processes."""
        return self.tokens_per_step_per_rank * world_size

    def total_steps(self, world_size: int = 1) -> int:
        if self.train.steps:
            return self.train.steps
        return max(1, self.train.tokens // self.global_tokens_per_step(world_size))


# ----------------------------------------------------------------------------- YAML


def load_yaml_tree(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML recipe, resolving `extends:` (relative to the file) by deep merge."""
    path = path.resolve()
    if path in _seen:
        raise RecipeError(f"{path}: extends: cycle through {' -> '.join(map(str, _seen))}")
    try:
        text = path.read_text()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = load_yaml_tree(path.parent / str(parent), _seen + (path,))
    return deep_merge(base, raw)


def deep_merge(base: dict, over: dict, keep_base: Callable[[Any], bool] = lambda value: False) -> dict:
    """`over` merged into `base` (nested mappings merged, other values replaced), except values for which
    `keep_base(value)` holds where `base` has the key (e.g. DeepSpeed's "auto")."""
    out = dict(base)
    for k, v in over.items():
        if k in out and keep_base(v):
            continue
        out[k] = deep_merge(out[k], v, keep_base) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(raw: dict, item: str, source: str = "--set") -> None:
    """Apply `a.b.c=value` to a nested dict; the value is parsed as YAML (so 1e-3, true, [1,2])."""
    if "=" not in item:
        raise RecipeError(f"{source}: expected key.path=value, got {item!r}")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise RecipeError(f"{source}: {key}: {p} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        node[parts[-1]] = text


# ----------------------------------------------------------------------------- typed build


def build_dataclass(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: {prefix or '<root>'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise RecipeError(f"{source}: unknown key {path}{hint}")
        kwargs[key] = coerce(hints[key], value, source, path)
    return cls(**kwargs)


def coerce(tp: Any, value: Any, source: str, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting the few safe cases (int->float, '1e-3')."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, source, path + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, source, path)
            except RecipeError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise RecipeError(f"{source}: {path}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{source}: {path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(item, v, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise RecipeError(f"{source}: {path}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _number(text: str) -> Any:
    try:
        return float(text.replace("_", ""))
    except ValueError:
        return text


# ----------------------------------------------------------------------------- semantic checks


def validate(r: Recipe, source: str) -> None:
    def fail(path: str, msg: str) -> None:
        raise RecipeError(f"{source}: {path}: {msg}")

    m, t = r.model, r.train
    positive = {
        "model.d_model": m.d_model, "model.n_layers": m.n_layers, "model.n_heads": m.n_heads,
        "model.kv_heads": m.kv_heads, "model.ffn_dim": m.ffn_dim, "model.mup.base_width": m.mup.base_width,
        "train.batch_size": t.batch_size, "train.seq_len": t.seq_len, "train.grad_accum": t.grad_accum,
        "train.eval_every": t.eval_every, "train.eval_batches": t.eval_batches,
        "train.keep_ckpts": t.keep_ckpts, "logging.log_every": r.logging.log_every,
        "optim.lr": r.optim.lr, "model.rope_theta": m.rope_theta, "model.mtp.n_future": m.mtp.n_future,
    }
    for path, v in positive.items():
        if v is not None and v <= 0:
            fail(path, f"must be positive, got {v}")
    for path, v in {"model.vocab_size": m.vocab_size, "train.ckpt_every": t.ckpt_every,
                    "train.clip": t.clip, "optim.weight_decay": r.optim.weight_decay,
                    "model.z_loss": m.z_loss, "model.max_seq_len": m.max_seq_len, "model.loss_chunk": m.loss_chunk,
                    "model.moe.num_experts": m.moe.num_experts}.items():
        if v < 0:
            fail(path, f"must be >= 0, got {v}")
    if m.n_heads % m.kv_heads:
        fail("model.n_heads", f"{m.n_heads} is not divisible by model.n_kv_heads={m.kv_heads}")
    if m.d_model % m.n_heads:
        fail("model.d_model", f"{m.d_model} is not divisible by model.n_heads={m.n_heads}")
    if m.head_dim % 2:
        fail("model.d_model", f"head dim {m.head_dim} must be even for RoPE")
    if (t.steps is None) == (t.tokens is None):
        fail("train.steps", "set exactly one of train.steps and train.tokens")
    for path, v in {"train.steps": t.steps, "train.tokens": t.tokens}.items():
        if v is not None and v <= 0:
            fail(path, f"must be positive, got {v}")
    s = r.schedule
    fracs = {"schedule.warmup_frac": s.warmup_frac, "schedule.min_lr_ratio": s.min_lr_ratio,
             "schedule.wsd.decay_frac": s.wsd.decay_frac, "schedule.power.decay_frac": s.power.decay_frac,
             "data.val_fraction": r.data.val_fraction}
    for path, v in fracs.items():
        if not 0.0 <= v <= 1.0:
            fail(path, f"must be in [0, 1], got {v}")
    if s.warmup_frac + (s.wsd.decay_frac if s.name == "wsd" else 0.0) > 1.0:
        fail("schedule.warmup_frac", "warmup_frac + wsd.decay_frac exceeds 1")
    if len(r.optim.betas) != 2 or not all(0 <= b < 1 for b in r.optim.betas):
        fail("optim.betas", f"expected two values in [0, 1), got {r.optim.betas}")
    if r.data.source == "files" and not r.data.paths:
        fail("data.paths", "source=files needs at least one path or glob")
    if r.data.source == "hf" and not r.data.dataset:
        fail("data.dataset", "source=hf needs a dataset name or path")
    if r.tokenizer.kind == "hf" and not r.tokenizer.path:
        fail("tokenizer.path", "kind=hf needs a tokenizer name or path")
    _validate_moe_mtp(m, fail)
    d = r.distributed
    if not 0 <= d.zero_stage <= 3:
        fail("distributed.zero_stage", f"must be 0-3, got {d.zero_stage}")
    if "nvme" in (d.offload_optimizer, d.offload_params) and not d.nvme_path:
        fail("distributed.nvme_path", "nvme offload needs distributed.nvme_path")
    if t.spike_threshold <= 0:
        fail("train.spike_threshold", f"must be positive, got {t.spike_threshold}")
    if t.spike_window < 1:
        fail("train.spike_window", f"must be >= 1, got {t.spike_window}")
    if t.spike_policy == "skip" and d.strategy == "deepspeed":
        fail("train.spike_policy", "skip cannot drop an update under DeepSpeed (it steps inside backward); "
                                   "use log or rewind")
    _validate_mup(m, fail)


def _validate_mup(m: ModelConfig, fail) -> None:
    """Bounds of the muP constants (model.mup.*) and of model.init_std."""
    u = m.mup
    for key in ("input_mult", "output_mult", "attn_mult", "embed_lr_mult", "hidden_lr_mult",
                "readout_lr_mult", "vector_lr_mult"):
        if not getattr(u, key) > 0:
            fail(f"model.mup.{key}", f"must be positive, got {getattr(u, key)}")
    for path, v in {"model.mup.base_depth": u.base_depth, "model.mup.base_head_dim": u.base_head_dim,
                    "model.init_std": m.init_std}.items():
        if v is not None and not v > 0:
            fail(path, f"must be positive, got {v}")


def _validate_moe_mtp(m: ModelConfig, fail) -> None:
    e = m.moe
    if e.num_experts:
        if not 1 <= e.top_k <= e.num_experts:
            fail("model.moe.top_k", f"must be in [1, num_experts={e.num_experts}], got {e.top_k}")
        if e.every <= 0:
            fail("model.moe.every", f"must be positive, got {e.every}")
        if e.expert_hidden is not None and e.expert_hidden <= 0:
            fail("model.moe.expert_hidden", f"must be positive, got {e.expert_hidden}")
        if e.shared_experts < 0 or e.first_dense < 0:
            fail("model.moe", "shared_experts and first_dense must be >= 0")
    w = m.mtp.weights
    if w is not None and len(w) != m.mtp.n_future - 1:
        fail("model.mtp.weights", f"needs n_future-1={m.mtp.n_future - 1} values, got {len(w)}")
