"""The recipe: one typed tree of dataclasses, loaded from YAML, validated once at the edge.

`Recipe.load("r.yaml", overrides=["train.steps=100"])` reads the file (following `extends:`),
applies `key.path=value` overrides, checks every key and value, and returns the typed tree.
Every error is a `RecipeError` whose one-line message names the file and the key path.
This module must not import torch: the sweep planner and the fitter use it on any machine.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .errors import RecipeError  # noqa: F401 - defined with the error boundary, imported from here by most modules
from .validation import validate  # the semantic checks, run by Recipe.from_dict
# the YAML side (extends, --set, typed build); re-exported: callers import these from windtunnel.recipe
from .yamltree import apply_override, build_dataclass, coerce, deep_merge, load_yaml_tree  # noqa: F401


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
class SourceFields:
    """Where one corpus comes from: the flat `data.*` keys, or one entry of `data.sources`."""
    source: Literal["stdlib", "files", "hf"] = "stdlib"
    paths: list[str] = field(default_factory=list)  # files, directories or globs (source=files)
    dataset: str | None = None  # datasets name or local path (source=hf)
    dataset_config: str | None = None
    split: str = "train"
    streaming: bool = False
    text_field: str = "text"
    max_documents: int | None = None  # cap on documents read (quick runs)
    stdlib_tests: bool = True  # include the stdlib's test/ folders in the embedded corpus


@dataclass
class SourceConfig(SourceFields):
    """One named source of a mixture (data/mixture.py); its own fields as for a one-source recipe."""
    name: str = ""  # used in metric keys: val_loss/<name>
    weight: float = 1.0  # relative share of training sequences (normalised over the sources)


@dataclass
class DataConfig(SourceFields):
    val_fraction: float = 0.01  # held-out documents, chosen by a hash of the document id
    cache_dir: str = ".windtunnel_cache"
    # Mixtures (data/mixture.py): named sources replace the flat source keys above when given.
    sources: list[SourceConfig] = field(default_factory=list)
    mix: dict[str, float] | None = None  # {name: weight} overriding the sources' weights (sweeps, --set)
    warn_epochs: float = 4.0  # warn when a source is planned to repeat more (Muennighoff et al. 2023)
    max_epochs: float | None = None  # refuse a run that would repeat any source more than this


@dataclass
class TokenizerConfig:
    kind: Literal["byte", "hf", "bpe"] = "byte"  # bpe = trained locally by `windtunnel tokenizer train`
    path: str | None = None  # HF tokenizer name/path, or where the trained BPE lives
    vocab_size: int = 4096  # target vocabulary for `tokenizer train`


@dataclass
class MuonConfig:
    """Muon on the hidden matrices (optim.name=muon); embeddings, readout, norms and biases stay on AdamW."""
    momentum: float = 0.95  # momentum of the gradient before orthogonalisation (Keller Jordan's Muon)
    nesterov: bool = True
    ns_steps: int = 5  # Newton-Schulz iterations (torch.optim.Muon's quintic coefficients)
    # Per-matrix update scale: match_rms_adamw = 0.2*sqrt(max(A, B)) (Moonlight, Liu et al. 2025: AdamW's
    # LR and weight decay carry over); original = sqrt(max(1, A/B)) (Keller Jordan: wants ~10-50x the LR).
    adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw"
    adamw_lr_mult: float = 1.0  # LR of the AdamW groups relative to optim.lr


@dataclass
class OptimConfig:
    name: Literal["adamw", "muon"] = "adamw"
    lr: float = 3e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False  # weight decay on embeddings (off by default, as for norms)
    fused: bool | None = None  # None = fused on GPU, foreach elsewhere
    muon: MuonConfig = field(default_factory=MuonConfig)  # used when name=muon


@dataclass
class WSDConfig:
    decay_frac: float = 0.2  # fraction of training spent decaying
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"
    branches: list[int] = field(default_factory=list)  # token counts: decay branches (sweeps)
    decay_mix: dict[str, float] | None = None  # mixture weights during the decay (and decay branches)


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
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # see compile.py
    compile_scope: Literal["model", "blocks"] = "model"  # blocks = each transformer block on its own
    compile_static: bool = False  # dynamic=False: static shapes (implied by reduce-overhead)
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
