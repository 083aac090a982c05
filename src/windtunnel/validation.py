"""Semantic checks of a recipe, done once at load (`recipe.validate`): one-line RecipeError per problem.

Numbers are checked systematically: every number in the tree (lists included) must be finite, and
must lie inside the bound of its key in RECIPE_BOUNDS, or be >= 0 when its key is not listed, so a
field added later is covered without a new line here. Cross-field rules (divisibility, exactly one
of steps/tokens, the distributed and muP combinations, decay branches) follow. Checks that need the
tokenizer or the corpus (model.vocab_size against the tokenizer: a model may also be fed
user batches) live in windtunnel.data and run before the first training step.
Like recipe.py, this module does not import torch.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import RecipeError

if TYPE_CHECKING:
    from .recipe import ModelConfig, Recipe

Fail = Callable[[str, str], None]
INT64_MAX = 2**63 - 1
BYTE_VOCAB = 258  # the byte-level alphabet a BPE starts from, plus end of document and padding


@dataclass(frozen=True)
class Bound:
    """An interval for a number; None = unbounded on that side."""

    low: float | None = 0.0
    high: float | None = None
    low_open: bool = False  # True: `low` itself is refused
    high_open: bool = False
    note: str = ""  # why, appended to the message

    def admits(self, v: float) -> bool:
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return self.high is None or (v < self.high or (not self.high_open and v == self.high))

    def __str__(self) -> str:
        if self.low is None and self.high is None:
            return "finite"
        if self.high is None:
            if self.low_open and self.low == 0:
                return "positive"
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


NON_NEGATIVE = Bound()
POSITIVE = Bound(low_open=True)
FRACTION = Bound(0, 1)
ANY = Bound(None)

_POSITIVE_KEYS = """
model.d_model model.n_layers model.n_heads model.n_kv_heads model.ffn_hidden model.ffn_multiple_of
model.rope_theta model.norm_eps model.init_std model.mup.base_width model.mup.base_head_dim
model.mup.input_mult model.mup.output_mult model.mup.attn_mult model.moe.top_k model.moe.expert_hidden
model.mup.embed_lr_mult model.mup.hidden_lr_mult model.mup.readout_lr_mult model.mup.vector_lr_mult
model.mup.base_depth model.moe.every model.mtp.n_future data.max_documents tokenizer.vocab_size optim.lr optim.eps optim.muon.adamw_lr_mult
schedule.power.a schedule.power.lr_max schedule.wsd.branches train.batch_size train.seq_len train.steps
train.tokens train.grad_accum train.spike_threshold train.spike_window train.eval_every train.eval_batches train.keep_ckpts train.threads
logging.log_every logging.peak_tflops distributed.reduce_bucket_size distributed.prefetch_bucket_size
distributed.sub_group_size
""".split()

RECIPE_BOUNDS: dict[str, Bound] = {
    **dict.fromkeys(_POSITIVE_KEYS, POSITIVE),
    **dict.fromkeys(["schedule.warmup_frac", "schedule.min_lr_ratio", "schedule.wsd.decay_frac",
                     "schedule.power.decay_frac"], FRACTION),
    "data.val_fraction": Bound(0, 1, high_open=True, note="1 would leave no training data"),
    "optim.betas": Bound(0, 1, high_open=True),
    "schedule.power.b": ANY,  # the exponent of the Power scheduler (Shen et al. 2024) is negative
    "distributed.zero_stage": Bound(0, 3),
    "optim.muon.momentum": Bound(0, 1, high_open=True),
    "optim.muon.ns_steps": Bound(1, 99),
    **dict.fromkeys(["data.warn_epochs", "data.max_epochs"], POSITIVE),  # data mixtures (data/mixture.py)
}


def check_numbers(obj: Any, bounds: dict[str, Bound], fail: Fail, prefix: str = "") -> None:
    """Every int/float field of a dataclass tree (and of its lists) is finite and inside its bound."""
    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_numbers(value, bounds, fail, path + ".")
            continue
        items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            where = path if i is None else f"{path}[{i}]"
            if isinstance(v, float) and not math.isfinite(v):  # (math.isfinite overflows on huge ints)
                fail(where, f"must be finite, got {v}")
            if isinstance(v, int) and abs(v) > INT64_MAX:  # torch (seeds, counters) takes 64-bit integers
                fail(where, f"must fit in 64 bits (at most {INT64_MAX}), got a {len(str(abs(v)))}-digit number")
            bound = bounds.get(path, NON_NEGATIVE)
            if not bound.admits(v):
                fail(where, f"must be {bound}, got {v}" + (f" ({bound.note})" if bound.note else ""))


def validate(r: Recipe, source: str) -> None:
    """Raise RecipeError('<source>: <key>: <why>') on the first problem of a built recipe."""

    def fail(path: str, msg: str) -> None:
        raise RecipeError(f"{source}: {path}: {msg}")

    check_numbers(r, RECIPE_BOUNDS, fail)
    _check_model(r.model, fail)
    _check_training(r, fail)
    _check_inputs(r, fail)
    _check_distributed(r, fail)
    _check_mixture(r, fail)  # data.sources / data.mix / schedule.wsd.decay_mix


def _check_model(m: ModelConfig, fail: Fail) -> None:
    if m.n_heads % m.kv_heads:
        fail("model.n_heads", f"{m.n_heads} is not divisible by model.n_kv_heads={m.kv_heads}")
    if m.d_model % m.n_heads:
        fail("model.d_model", f"{m.d_model} is not divisible by model.n_heads={m.n_heads}")
    if m.head_dim % 2:
        fail("model.d_model", f"head dim {m.head_dim} must be even for RoPE")
    e = m.moe
    if e.num_experts and e.top_k > e.num_experts:
        fail("model.moe.top_k", f"must be in [1, num_experts={e.num_experts}], got {e.top_k}")
    w = m.mtp.weights
    if w is not None and len(w) != m.mtp.n_future - 1:
        fail("model.mtp.weights", f"needs n_future-1={m.mtp.n_future - 1} values, got {len(w)}")


def _check_training(r: Recipe, fail: Fail) -> None:
    t, s = r.train, r.schedule
    if (t.steps is None) == (t.tokens is None):
        fail("train.steps", "set exactly one of train.steps and train.tokens")
    if s.warmup_frac + (s.wsd.decay_frac if s.name == "wsd" else 0.0) > 1.0:
        fail("schedule.warmup_frac", "warmup_frac + wsd.decay_frac exceeds 1")
    if len(r.optim.betas) != 2:
        fail("optim.betas", f"expected two values in [0, 1), got {r.optim.betas}")
    if not t.compile and (t.compile_mode, t.compile_scope, t.compile_static) != ("default", "model", False):
        fail("train.compile", "train.compile_mode/compile_scope/compile_static need train.compile: true")
    branches = s.wsd.branches
    if branches and s.name != "wsd":
        fail("schedule.wsd.branches", f"decay branches need schedule.name=wsd, got {s.name}")
    late = [b for b in branches if t.tokens is not None and b >= t.tokens]
    if late:
        fail("schedule.wsd.branches", f"{late[0]} tokens is not before the end of the run (train.tokens={t.tokens})")


def _check_inputs(r: Recipe, fail: Fail) -> None:
    d, tok = r.data, r.tokenizer
    if d.source == "files" and not d.paths:
        fail("data.paths", "source=files needs at least one path or glob")
    if d.source == "hf" and not d.dataset:
        fail("data.dataset", "source=hf needs a dataset name or path")
    if tok.kind == "hf" and not tok.path:
        fail("tokenizer.path", "kind=hf needs a tokenizer name or path")
    if tok.kind == "bpe" and tok.vocab_size < BYTE_VOCAB:
        fail("tokenizer.vocab_size", f"{tok.vocab_size} is too small for a byte-level BPE (needs >= {BYTE_VOCAB})")


def check_distributed(r: Recipe, source: str = "recipe") -> None:
    """The distributed checks alone, for recipes built or changed in code after validation."""

    def fail(path: str, msg: str) -> None:
        raise RecipeError(f"{source}: {path}: {msg}")

    _check_distributed(r, fail)


def _check_distributed(r: Recipe, fail: Fail) -> None:
    """Combinations the schema allows but the strategies do not (accelerate/DeepSpeed/FSDP2)."""
    d = r.distributed
    offloads = {"offload_optimizer": d.offload_optimizer, "offload_params": d.offload_params}
    if d.strategy != "deepspeed" and d.zero_stage:
        fail("distributed.zero_stage", f"{d.zero_stage} applies to strategy deepspeed, not {d.strategy}")
    if "nvme" in offloads.values() and not d.nvme_path:
        fail("distributed.nvme_path", "nvme offload needs distributed.nvme_path")
    if d.strategy == "ddp":
        for key, device in offloads.items():
            if device != "none":
                fail(f"distributed.{key}", f"{device} offload needs strategy deepspeed (or fsdp with offload_params=cpu)")
    elif d.strategy == "fsdp":
        if d.offload_optimizer != "none":
            fail("distributed.offload_optimizer", "FSDP2 runs the optimizer step on CPU with offload_params=cpu; "
                                                  "set offload_optimizer=none")
        if d.offload_params == "nvme":
            fail("distributed.offload_params", "FSDP2 offloads to cpu only; nvme needs strategy deepspeed, zero_stage 3")
    else:
        if d.offload_params != "none" and d.zero_stage != 3:
            fail("distributed.offload_params", f"parameter offload needs zero_stage 3, got {d.zero_stage}")
        if d.offload_optimizer != "none" and d.zero_stage == 0:
            fail("distributed.offload_optimizer", "optimizer offload needs zero_stage 1-3, got 0")
        if d.offload_optimizer == "nvme" and d.zero_stage != 3:
            fail("distributed.offload_optimizer", f"nvme optimizer offload needs zero_stage 3, got {d.zero_stage}")
        if r.train.nan_policy == "skip":
            fail("train.nan_policy", "skip is not possible with distributed.strategy=deepspeed "
                                     "(DeepSpeed steps inside backward); use halt")
        if r.optim.name == "muon":  # ZeRO hands the optimizer flat 1-D shards: no matrix to orthogonalise
            fail("optim.name", "muon does not run under distributed.strategy=deepspeed (ZeRO flattens the "
                               "matrices); use strategy ddp or fsdp")
        if r.train.spike_policy == "skip":
            fail("train.spike_policy", "skip cannot drop an update under DeepSpeed (it steps inside backward); "
                                       "use log or rewind")


def _check_mixture(r: Recipe, fail: Fail) -> None:
    """Named sources with non-negative weights; data.mix and decay_mix name known sources."""
    d = r.data
    names = [s.name for s in d.sources]
    source_bounds = {k.replace("data.", "", 1): b for k, b in RECIPE_BOUNDS.items() if k.startswith("data.")}
    for i, s in enumerate(d.sources):
        where = f"data.sources[{i}]"
        if not s.name or not s.name.replace("_", "").replace("-", "").isalnum():
            fail(f"{where}.name", f"needs a name of letters, digits, _ or -, got {s.name!r}")
        check_numbers(s, source_bounds, fail, f"{where}.")  # weight >= 0, max_documents > 0, ...
        if s.source == "files" and not s.paths:
            fail(f"{where}.paths", "source=files needs at least one path or glob")
        if s.source == "hf" and not s.dataset:
            fail(f"{where}.dataset", "source=hf needs a dataset name or path")
    if len(set(names)) != len(names):
        fail("data.sources", f"source names must be unique, got {names}")
    if d.sources:
        own = {f.name for f in dataclasses.fields(d.sources[0])} - {"name", "weight"}  # a source's own keys
        default = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                   for f in dataclasses.fields(d) if f.name in own}
        moved = [k for k, v in default.items() if getattr(d, k) != v]
        if moved:
            fail(f"data.{moved[0]}", "set it on each entry of data.sources (a mixture has no top-level source)")
        if sum(s.weight for s in d.sources) <= 0 and not d.mix:
            fail("data.sources", "weights sum to 0")
    for path, mix in (("data.mix", d.mix), ("schedule.wsd.decay_mix", r.schedule.wsd.decay_mix)):
        if mix is None:
            continue
        if not d.sources:
            fail(path, "needs data.sources (a mixture of named sources)")
        unknown = sorted(set(mix) - set(names))
        if unknown:
            fail(path, f"unknown source {unknown[0]!r} (sources: {', '.join(names)})")
        if any(not 0 <= w < math.inf for w in mix.values()) or sum(mix.values()) <= 0:
            fail(path, f"weights must be >= 0 and sum to more than 0, got {mix}")
    if r.schedule.wsd.decay_mix is not None and r.schedule.name != "wsd":
        fail("schedule.wsd.decay_mix", f"needs schedule.name=wsd, got {r.schedule.name}")
