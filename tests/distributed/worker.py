"""One training run of a tiny muP model on synthetic data, for the multi-process tests.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/worker.py OUT_DIR \
        --set distributed.strategy=deepspeed --set distributed.zero_stage=2 [--resume] [--die-at STEP]

Every rank trains on its own slice of the same global batch (GLOBAL_ROWS sequences), so any world size
sees the same data per optimizer step. Rank 0 writes OUT_DIR/result.json (losses, the innermost
optimizer's param groups, time spent in the optimizer step).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from windtunnel.recipe import Recipe
from windtunnel.trainer import Callback, Trainer

GLOBAL_ROWS = 8
SEQ = 16
VOCAB = 64
STEPS = 8


def base_recipe(world: int, overrides: list[str]) -> Recipe:
    raw = {
        "model": {"vocab_size": VOCAB, "d_model": 32, "n_layers": 2, "n_heads": 2, "ffn_hidden": 64,
                  "tie_embeddings": False, "parameterization": "mup", "mup": {"base_width": 16}},
        "optim": {"lr": 1e-2, "weight_decay": 0.1},
        "schedule": {"name": "wsd", "warmup_steps": 2, "wsd": {"decay_frac": 0.25}},
        "train": {"batch_size": GLOBAL_ROWS // world, "seq_len": SEQ, "steps": STEPS, "eval_every": 4,
                  "ckpt_every": 4, "keep_ckpts": 2, "threads": 1, "seed": 0},
        "logging": {"log_every": 1, "progress": False},
    }
    return Recipe.from_dict(raw).with_overrides(overrides)


def global_batches(n: int, seed: int) -> list[torch.Tensor]:
    """Learnable sequences: x[t+1] = (3 x[t] + 1) mod VOCAB from random starts, with 10% random tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = torch.randint(0, VOCAB, (GLOBAL_ROWS, 1), generator=g)
        seq = start.clone().repeat(1, SEQ + 1)
        for t in range(1, SEQ + 1):
            seq[:, t] = (3 * seq[:, t - 1] + 1) % VOCAB
        noise = torch.rand(seq.shape, generator=g) < 0.1
        seq[noise] = torch.randint(0, VOCAB, (int(noise.sum()),), generator=g)
        out.append(seq)
    return out


def local_fraction(model) -> float:
    """Share of the parameters this rank holds (1.0 replicated, ~1/world sharded by FSDP2 or ZeRO-3)."""
    local = full = 0
    for p in model.parameters():
        if hasattr(p, "ds_tensor"):  # ZeRO-3 partition
            local, full = local + p.ds_tensor.numel(), full + p.ds_numel
        else:
            local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
            full += p.numel()
    return local / full


def innermost(optimizer):
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


class Probe(Callback):
    """Records the real optimizer's groups after the first step and times its step()."""

    def __init__(self, die_at: int | None):
        self.die_at, self.groups, self.base_lr, self.step_s, self.wrapped = die_at, None, None, 0.0, False

    def on_step_end(self, trainer, step, row):
        opt = innermost(trainer.optimizer)
        if not self.wrapped:
            self._time_steps(opt)
        if self.groups is None:
            self.base_lr = trainer.schedule(step - 1)  # what set_lr applied for this step
            self.groups = [{k: g[k] for k in ("lr", "lr_mult", "weight_decay", "eps") if k in g}
                           | {"numel": sum(p.numel() for p in g["params"])} for g in opt.param_groups]
        if step == self.die_at:
            os._exit(3)  # a hard kill: no cleanup, no summary

    def _time_steps(self, opt):
        inner_step = opt.step

        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = inner_step(*args, **kwargs)
            self.step_s += time.perf_counter() - t
            return out

        opt.step = timed
        self.wrapped = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--die-at", type=int)
    args = ap.parse_args()
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    recipe = base_recipe(world, args.overrides)
    rows = slice(rank * GLOBAL_ROWS // world, (rank + 1) * GLOBAL_ROWS // world)
    train = [b[rows] for b in global_batches(STEPS, seed=1)]
    val = [b[rows] for b in global_batches(2, seed=2)]
    probe = Probe(args.die_at)
    trainer = Trainer(recipe, train_data=train, val_data=val, callbacks=[probe], out_dir=args.out,
                      resume=args.resume)
    summary = trainer.fit()
    if trainer.accelerator.is_main_process:
        rows_ = [json.loads(line) for line in open(os.path.join(args.out, "metrics.jsonl"))]
        result = {"summary": summary, "world": trainer.world, "groups": probe.groups, "base_lr": probe.base_lr,
                  "local_fraction": local_fraction(trainer.model),
                  "optimizer_step_s": probe.step_s, "optimizer": type(innermost(trainer.optimizer)).__name__,
                  "losses": [r["loss"] for r in rows_ if "loss" in r],
                  "val_losses": [r["val_loss"] for r in rows_ if "val_loss" in r]}
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
