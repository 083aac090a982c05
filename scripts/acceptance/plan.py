"""The acceptance plan: steps in order of value, what each needs in seconds, and the targets.

A step starts only when the time left covers its `need` (the least it takes when all goes well, compile
warm-up included); it is then given min(`cap`, time left). `after` names a step whose output it uses.
Estimates for the GPU are for one H100/H200; the dry-run ones for a shared 2-core CPU.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str
    group: str  # a correctness, b throughput, c distributed, d muP; setup first
    title: str
    need_gpu: float
    cap_gpu: float
    need_cpu: float
    cap_cpu: float
    after: str | None = None
    module: str = "checks"  # acceptance.<module>.<func or name>(ctx) runs it
    func: str | None = None

    def need(self, gpu: bool) -> float:
        return self.need_gpu if gpu else self.need_cpu

    def cap(self, gpu: bool) -> float:
        return self.cap_gpu if gpu else self.cap_cpu


S = Step
BENCH_STEP = {"module": "speed", "func": "bench_step"}
DIST_STEP = {"module": "training", "func": "distributed_run"}
PLAN = [  # name, group, title, need/cap on GPU, need/cap in the dry run
    S("env", "setup", "packages, device, matmul ceiling", 5, 120, 2, 60, module="env"),
    S("step_checks", "a", "graph breaks and host syncs in the train step", 20, 120, 5, 60),
    S("moe_grouped", "a", "MoE grouped_mm (bf16) vs per-expert reference", 10, 60, 3, 60),
    S("train", "a", "gpu-125m via accelerate launch: loss falls", 100, 300, 8, 60, module="training"),
    S("resume", "a", "resume from the mid-run checkpoint: same losses", 40, 150, 5, 60, "train", "training"),
    S("export", "a", "HF export loads in transformers, same logits", 20, 90, 4, 60, "train", "training"),
    S("bench_125m", "b", "125m vs HF Llama, compiled", 80, 200, 5, 60, **BENCH_STEP),
    S("bench_moe", "b", "MoE 8x top-2 vs HF Mixtral, compiled", 80, 200, 5, 60, **BENCH_STEP),
    S("bench_mtp4", "b", "mtp4 vs mtp1, compiled", 80, 200, 5, 60, **BENCH_STEP),
    S("dist_ddp", "c", "plain DDP reference (one process)", 25, 90, 5, 60, **DIST_STEP),
    S("dist_zero2_offload", "c", "DeepSpeed ZeRO-2 + CPU optimizer offload", 45, 150, 5, 60, "dist_ddp", **DIST_STEP),
    S("dist_zero3", "c", "DeepSpeed ZeRO-3", 30, 120, 5, 60, "dist_ddp", **DIST_STEP),
    S("dist_fsdp2", "c", "FSDP2 through accelerate", 25, 90, 3, 60, "dist_ddp", **DIST_STEP),
    S("compile_warmup", "b", "compile warm-up: whole model vs per block", 45, 150, 4, 60, module="speed"),
    S("bench_350m", "b", "350m vs HF Llama, compiled", 90, 200, 5, 60, **BENCH_STEP),
    S("bench_1b", "b", "1b vs HF Llama, compiled", 100, 220, 5, 60, **BENCH_STEP),
    S("bench_eager", "b", "all presets eager", 120, 240, 5, 60, module="speed"),
    S("offload_capacity", "c", "largest model per memory strategy (cut to fit)", 60, 240, 6, 60, module="speed"),
    S("mup_transfer", "d", "muP LR transfer at GPU widths", 60, 240, 6, 60, module="speed"),
]
STEPS = {s.name: s for s in PLAN}

# Issue 14's targets (bf16, seq 2048, one H100/H200): MFU of the compiled windtunnel rows.
MFU_TARGETS = {"125m": 0.50, "350m": 0.52, "1b": 0.55, "moe": 0.35}
MTP_MFU_RATIO = 0.9  # mtp4 MFU >= 0.9 x mtp1 MFU
MEM_RATIO = 0.75  # peak memory >= 25 % below HF compiled at the same batch

# The shapes each mode trains. gpu: the real recipes; cpu: recipes/gpu-dryrun.yaml (tiny, fp32, no compile).
TRAIN = {
    True: {"recipe": "recipes/gpu-125m.yaml", "steps": 100, "ckpt": 50,
           "set": ["train.tokens=null", "train.eval_batches=4", "logging.log_every=10"]},
    False: {"recipe": "recipes/gpu-dryrun.yaml", "steps": 30, "ckpt": 15,
            "set": ["train.tokens=null", "train.eval_batches=2", "logging.log_every=5"]},
}
DIST = {  # a few steps of a small model; losses logged every step and compared with plain DDP
    True: ["model.n_layers=4", "train.batch_size=8", "train.seq_len=512", "train.compile=false"],
    False: [],
}
DIST_STEPS = {True: 8, False: 4}
# bench presets per step: GPU presets, or the CPU ones of the same kind with tiny shapes in the dry run
BENCH = {"bench_125m": ("125m", "tiny"), "bench_moe": ("moe", "tiny-moe"), "bench_mtp4": ("mtp4", "tiny-mtp4"),
         "bench_350m": ("350m", "tiny"), "bench_1b": ("1b", "tiny")}
