"""Run directory -> a transformers model folder (`AutoModelForCausalLM.from_pretrained(out_dir)` loads it).

    export_run("runs/smoke", "hf/smoke")       # or: windtunnel export RUN_DIR OUT_DIR [--checkpoint DIR]

Reads run_dir/recipe.yaml (the resolved recipe) and the weights of the newest complete checkpoint
(`checkpoints/step_*/model.safetensors`, as accelerate's save_state writes it), else a consolidated
`checkpoints/model.safetensors`; writes config.json, model.safetensors (fp32), the tokenizer files and
windtunnel_recipe.yaml. Dense models become Llama (export/llama.py); MoE models Mixtral/Qwen-MoE (export/moe.py).

Converter interface (what export/moe.py implements as `convert`):

    convert(cfg: ModelConfig, state: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]

`state` holds the checkpoint tensors with wrapper prefixes removed and MTP heads already dropped; the
converter pops every key it converts (llama.take does that) — keys left over are an error, so no
weight is silently ignored. It returns the HF config fields (must include "model_type", e.g.
"mixtral"; they go to `AutoConfig.for_model`) and the HF state dict. A feature it cannot express
exactly raises llama.ExportError naming the recipe key. Token ids (eos/bos/pad) are added here.
"""
from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Protocol

from torch import Tensor

from ..checkpoint import readable_checkpoint
from ..consolidate import WEIGHTS, canonical_name
from ..data import build_tokenizer
from ..data.tokenizers import bpe_dir
from ..recipe import ModelConfig, Recipe
from . import llama, moe
from .llama import ExportError

__all__ = ["export_run", "find_weights", "load_state", "Converter", "ExportError"]


class Converter(Protocol):
    def __call__(self, cfg: ModelConfig, state: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]: ...


def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Write the run's weights, config and tokenizer as a transformers folder; returns out_dir."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    recipe = Recipe.load(run_dir / "recipe.yaml")
    cfg = recipe.model
    if cfg.vocab_size <= 0 or cfg.max_seq_len <= 0:
        raise ExportError(f"{run_dir / 'recipe.yaml'}: model.vocab_size/max_seq_len are unresolved "
                          "(export needs the recipe.yaml the trainer wrote)")
    convert = converter_for(cfg)  # fails on unsupported features before any heavy work
    state = drop_mtp(cfg, load_state(find_weights(run_dir, checkpoint)))
    hf_config, hf_state = convert(cfg, state)
    if state:
        raise ExportError(f"checkpoint: {len(state)} tensors have no HF equivalent, e.g. {sorted(state)[0]!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    token_ids = save_tokenizer(recipe, out_dir)
    write_model(hf_config | token_ids, hf_state, out_dir)
    shutil.copyfile(run_dir / "recipe.yaml", out_dir / "windtunnel_recipe.yaml")
    return out_dir


def converter_for(cfg: ModelConfig) -> Converter:
    if cfg.moe.num_experts > 0:
        return moe.convert
    llama.check_supported(cfg)
    return llama.convert


# ----------------------------------------------------------------------------- reading


def find_weights(run_dir: Path, checkpoint: str | Path | None = None) -> Path:
    """The safetensors file to export: checkpoint (a file or a directory holding model.safetensors),
    else the newest intact checkpoints/step_*/model.safetensors, else checkpoints/model.safetensors."""
    if checkpoint is not None:
        where = Path(checkpoint)
        if where.is_file():
            return where
        candidates = [where / WEIGHTS]
    else:
        latest = readable_checkpoint(Path(run_dir))  # skips a corrupt newest one, with a warning
        where = latest or Path(run_dir) / "checkpoints"
        candidates = ([latest / WEIGHTS] if latest else []) + [Path(run_dir) / "checkpoints" / WEIGHTS]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{where}: no {WEIGHTS} to export{_sharded_hint(where)}")


def _sharded_hint(where: Path) -> str:
    # accelerate names DeepSpeed shards pytorch_model/ and FSDP ones pytorch_model_fsdp*.
    if where.is_dir() and any(p.name.startswith("pytorch_model") for p in where.iterdir()):
        return " (it holds a sharded DeepSpeed/FSDP checkpoint: consolidate it to model.safetensors first)"
    return ""


def load_state(path: Path) -> dict[str, Tensor]:
    """Checkpoint tensors by windtunnel parameter name (DDP `module.` and wrapper segments removed)."""
    from safetensors.torch import load_file

    return {canonical_name(k): v for k, v in load_file(str(path)).items()}


def drop_mtp(cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Multi-token-prediction heads have no HF equivalent; the next-token model is complete without them."""
    dropped = [k for k in state if k.startswith("mtp.")]
    if dropped:
        print(f"windtunnel export: note: dropping the {cfg.mtp_depths} extra MTP head(s) "
              f"({len(dropped)} tensors); the exported model predicts the next token only", file=sys.stderr)
    return {k: v for k, v in state.items() if k not in dropped}


# ----------------------------------------------------------------------------- writing


def save_tokenizer(recipe: Recipe, out_dir: Path) -> dict:
    """Save the run's tokenizer as HF files; returns the token ids for config.json (None when skipped)."""
    ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if recipe.tokenizer.kind == "bpe" and not (bpe_dir(recipe) / "tokenizer.json").exists():
        warnings.warn(f"tokenizer not exported: the run's BPE tokenizer {bpe_dir(recipe)} is missing", stacklevel=2)
        return ids
    build_tokenizer(recipe).save_hf(out_dir)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(out_dir))
    vocab = recipe.model.vocab_size
    if len(hf) > vocab:
        warnings.warn(f"tokenizer has {len(hf)} tokens but model.vocab_size={vocab}", stacklevel=2)
    # An id outside the embedding would break HF (padding_idx); such ids are left unset.
    return {key: i if (i := getattr(hf, key)) is not None and i < vocab else None for key in ids}


def write_model(hf_config: dict, hf_state: dict[str, Tensor], out_dir: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoConfig

    fields = dict(hf_config)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    config.save_pretrained(str(out_dir))
    save_file(hf_state, str(out_dir / WEIGHTS), metadata={"format": "pt"})
