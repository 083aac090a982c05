"""Text generation from a run directory: greedy, temperature + top-p sampling, and self-speculative decoding.

    windtunnel generate RUN_DIR --prompt "def f(" [--max-new-tokens N] [--temperature T --top-p P]
                                [--speculative] [--checkpoint DIR] [--seed S]

Self-speculative decoding (blockwise parallel decoding, Stern et al. 2018, as used with multi-token heads by
Gloeckle et al. 2024): one forward pass verifies the previous drafts with the main head and, at the last
accepted position, drafts the next n-1 tokens with the MTP heads. A draft is kept only while it equals the
main head's greedy choice, so the output is exactly greedy decoding, in fewer forward passes.
The model has no KV cache: every pass reruns the whole context, and generation stops at model.max_seq_len.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import build_tokenizer
from .export import find_weights, load_state
from .models import build_model
from .recipe import Recipe, RecipeError


@dataclass
class Generation:
    tokens: list[int]  # new tokens only
    forwards: int  # full-model (trunk) forward passes
    seconds: float

    @property
    def tokens_per_forward(self) -> float:
        return len(self.tokens) / max(self.forwards, 1)


# ----------------------------------------------------------------------------- loading


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[nn.Module, Recipe]:
    """The run's model (eval mode) with the weights of its newest (or the given) checkpoint."""
    recipe = Recipe.load(Path(run_dir) / "recipe.yaml")
    model = build_model(recipe.model)
    model.load_state_dict(load_state(find_weights(Path(run_dir), checkpoint)))
    return model.eval(), recipe


# ----------------------------------------------------------------------------- decoding


def sample_next(logits_V: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> int:
    """Greedy when temperature <= 0; else sample from the smallest set of tokens with mass >= top_p."""
    if temperature <= 0:
        return int(logits_V.argmax())
    probs = torch.softmax(logits_V.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(descending=True)
    sorted_p[(sorted_p.cumsum(0) - sorted_p) >= top_p] = 0.0  # keep tokens until the mass reaches top_p
    return int(order[torch.multinomial(sorted_p, 1, generator=generator)])


def _budget(model: nn.Module, prompt: list[int], max_new_tokens: int) -> int:
    if not prompt:
        raise RecipeError("prompt: needs at least one token")
    return max(0, min(max_new_tokens, model.cfg.max_seq_len - len(prompt)))


def _main_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.logits(model.norm(x))


@torch.no_grad()
def generate(model: nn.Module, prompt: list[int], max_new_tokens: int, *, temperature: float = 0.0,
             top_p: float = 1.0, eos_id: int | None = None, seed: int = 0) -> Generation:
    """One full forward pass per new token (the baseline speculative decoding is measured against)."""
    device = model.embed.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    seq = torch.tensor([prompt], device=device)
    out: list[int] = []
    forwards, start = 0, time.perf_counter()
    for _ in range(_budget(model, prompt, max_new_tokens)):
        x = model.trunk(seq)
        forwards += 1
        token = sample_next(_main_logits(model, x[0, -1]), temperature, top_p, gen)
        if token == eos_id:
            break
        out.append(token)
        seq = torch.cat([seq, seq.new_tensor([[token]])], dim=1)
    return Generation(out, forwards, time.perf_counter() - start)


@torch.no_grad()
def speculative_generate(model: nn.Module, prompt: list[int], max_new_tokens: int, *,
                         eos_id: int | None = None) -> Generation:
    """Greedy decoding that drafts with the MTP heads and verifies with the main head (same output)."""
    if getattr(model, "mtp", None) is None:
        raise RecipeError("model.mtp.n_future: --speculative needs a model trained with MTP heads (n_future > 1)")
    device = model.embed.weight.device
    budget = _budget(model, prompt, max_new_tokens)
    start = time.perf_counter()
    seq = torch.tensor([prompt], device=device)
    x = model.trunk(seq)
    forwards, out = 1, []
    nxt = _main_logits(model, x[:, -1]).argmax(-1)  # [1]: the main head's token, always right
    drafts = model.draft(x, seq, nxt)
    while len(out) < budget:
        if budget - len(out) == 1:  # the main head's token needs no verification pass
            out.append(int(nxt))
            break
        cand = torch.stack([nxt, *drafts], dim=1)[:, : budget - len(out)]  # [1, <= n_future]
        L = seq.size(1)
        x = model.trunk(torch.cat([seq, cand], dim=1))
        forwards += 1
        preds = _main_logits(model, x[:, L - 1:]).argmax(-1)  # preds[:, j]: main choice for cand[:, j]
        accepted = 1
        while accepted < cand.size(1) and bool(cand[0, accepted] == preds[0, accepted]):
            accepted += 1
        new = cand[0, :accepted].tolist()
        if eos_id is not None and eos_id in new:
            out += new[: new.index(eos_id)]
            break
        out += new
        seq = torch.cat([seq, cand[:, :accepted]], dim=1)
        nxt = preds[:, accepted]
        if len(out) < budget:
            drafts = model.draft(x[:, : seq.size(1)], seq, nxt)
    return Generation(out[:budget], forwards, time.perf_counter() - start)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="windtunnel generate", description="generate text from a trained run")
    p.add_argument("run_dir")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--speculative", action="store_true", help="self-speculative greedy decoding with the MTP heads")
    p.add_argument("--checkpoint", help="checkpoint directory or .safetensors (default: the run's latest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def _check_args(args) -> None:
    if args.max_new_tokens <= 0:
        raise RecipeError(f"--max-new-tokens: must be positive, got {args.max_new_tokens}")
    if not 0.0 < args.top_p <= 1.0:
        raise RecipeError(f"--top-p: must be in (0, 1], got {args.top_p}")
    if args.speculative and args.temperature > 0:
        raise RecipeError("--speculative: decodes greedily; drop --temperature (or set it to 0)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    model, recipe = load_run(args.run_dir, args.checkpoint)
    model.to(args.device)
    tok = build_tokenizer(recipe)
    prompt = tok.encode(args.prompt)
    if args.speculative:
        result = speculative_generate(model, prompt, args.max_new_tokens, eos_id=tok.eos_id)
    else:
        result = generate(model, prompt, args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p, eos_id=tok.eos_id, seed=args.seed)
    print(args.prompt + tok.decode(result.tokens))
    print(f"{len(result.tokens)} tokens, {result.forwards} forward passes "
          f"({result.tokens_per_forward:.2f} tokens/pass), {result.seconds:.2f} s "
          f"({len(result.tokens) / max(result.seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return 0
