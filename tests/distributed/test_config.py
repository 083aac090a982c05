"""Recipe distributed block -> DeepSpeed config / FSDP2 plugin, and the checks on launcher conflicts."""
from __future__ import annotations

import json

import pytest
import torch

from windtunnel import distributed
from windtunnel.recipe import Recipe, RecipeError


def recipe(**dist) -> Recipe:
    return Recipe.from_dict({"model": {"d_model": 64, "n_heads": 2}, "train": {"steps": 1, "batch_size": 3,
                             "grad_accum": 2, "clip": 0.5}, "distributed": dist})


def test_zero2_cpu_offload_config():
    cfg = distributed.deepspeed_config(recipe(strategy="deepspeed", zero_stage=2, offload_optimizer="cpu"))
    z = cfg["zero_optimization"]
    assert z["stage"] == 2 and z["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in z
    assert z["overlap_comm"] and z["contiguous_gradients"] and z["reduce_bucket_size"] == 64 ** 2
    assert cfg["train_micro_batch_size_per_gpu"] == 3 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["zero_force_ds_cpu_optimizer"] is False  # keep our DeepSpeedCPUAdam (AdamW mode)
    assert "bf16" not in cfg  # fp32 on CPU


def test_zero3_nvme_and_knobs():
    r = recipe(strategy="deepspeed", zero_stage=3, offload_optimizer="nvme", offload_params="nvme",
               nvme_path="/nvme", overlap_comm=False, reduce_bucket_size=1000, sub_group_size=10 ** 8)
    z = distributed.deepspeed_config(r.with_overrides(["train.precision=bf16"]))["zero_optimization"]
    assert z["offload_param"]["nvme_path"] == z["offload_optimizer"]["nvme_path"] == "/nvme"
    assert z["overlap_comm"] is False and z["reduce_bucket_size"] == 1000 and z["sub_group_size"] == 10 ** 8
    assert z["stage3_prefetch_bucket_size"] == int(0.9 * 64 ** 2)
    assert distributed.deepspeed_config(r.with_overrides(["train.precision=bf16"]))["bf16"] == {"enabled": True}


@pytest.mark.parametrize("dist, key", [
    ({"strategy": "ddp", "zero_stage": 2}, "distributed.zero_stage"),
    ({"strategy": "ddp", "offload_optimizer": "cpu"}, "distributed.offload_optimizer"),
    ({"strategy": "deepspeed", "zero_stage": 2, "offload_params": "cpu"}, "distributed.offload_params"),
    ({"strategy": "deepspeed", "zero_stage": 0, "offload_optimizer": "cpu"}, "distributed.offload_optimizer"),
    ({"strategy": "deepspeed", "zero_stage": 2, "offload_optimizer": "nvme", "nvme_path": "/n"},
     "distributed.offload_optimizer"),
    ({"strategy": "fsdp", "offload_optimizer": "cpu"}, "distributed.offload_optimizer"),
    ({"strategy": "fsdp", "offload_params": "nvme", "nvme_path": "/n"}, "distributed.offload_params"),
])
def test_impossible_combinations_name_the_key(dist, key):
    with pytest.raises(RecipeError, match=key):
        distributed.check_distributed(recipe(**dist))


def test_deepspeed_refuses_nan_skip():
    with pytest.raises(RecipeError, match="train.nan_policy"):  # recipe validation refuses it first
        distributed.check_distributed(recipe(strategy="deepspeed", zero_stage=1).with_overrides(["train.nan_policy=skip"]))


def test_launcher_strategy_conflict_is_one_line_naming_both():
    with pytest.raises(RecipeError) as e:
        distributed.check_launcher(recipe(), {"ACCELERATE_USE_DEEPSPEED": "true"})
    msg = str(e.value)
    assert "\n" not in msg and "distributed.strategy=ddp" in msg and "ACCELERATE_USE_DEEPSPEED=true" in msg


@pytest.mark.parametrize("env, key", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "distributed.zero_stage=3"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu"},
     "distributed.offload_params=none"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, "train.grad_accum=2"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_MIXED_PRECISION": "fp16"}, "train.precision=auto"),
])
def test_launcher_field_conflicts(env, key):
    with pytest.raises(RecipeError, match=key):
        distributed.check_launcher(recipe(strategy="deepspeed", zero_stage=3), env)


def test_launcher_fsdp_version_and_agreeing_env():
    with pytest.raises(RecipeError, match="FSDP_VERSION=1"):
        distributed.check_launcher(recipe(strategy="fsdp"), {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})
    agree = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
             "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none", "ACCELERATE_MIXED_PRECISION": "no",
             "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2", "ACCELERATE_GRADIENT_CLIPPING": "0.5"}
    distributed.check_launcher(recipe(strategy="deepspeed", zero_stage=3), agree)


def test_user_deepspeed_file_overrides_and_auto(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": 2.0,
                                "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto",
                                                      "sub_group_size": 5}}))
    cfg = distributed.deepspeed_config(recipe(strategy="deepspeed", zero_stage=3), str(path))
    assert cfg["train_micro_batch_size_per_gpu"] == 3  # "auto" -> recipe
    assert cfg["gradient_clipping"] == 2.0  # explicit value wins
    z = cfg["zero_optimization"]
    assert z["reduce_bucket_size"] == 64 ** 2 and z["sub_group_size"] == 5 and z["overlap_comm"] is True


def test_fsdp_wraps_the_classes_the_model_declares(tiny_model_config):
    from windtunnel.distributed.wrap import set_wrap_classes
    from windtunnel.models import build_model

    plugin = distributed.fsdp_plugin(recipe(strategy="fsdp"))
    set_wrap_classes(plugin, build_model(tiny_model_config()))
    assert plugin.transformer_cls_names_to_wrap == ["Block"]
    with pytest.raises(RecipeError, match="distributed.strategy=fsdp: Linear does not declare"):
        set_wrap_classes(plugin, torch.nn.Linear(2, 2))


def test_user_deepspeed_file_conflicts(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(RecipeError, match=r"zero_optimization.stage=2 conflicts .* distributed.zero_stage=3"):
        distributed.deepspeed_config(recipe(strategy="deepspeed", zero_stage=3), str(path))
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 3}}))
    with pytest.raises(RecipeError, match="'optimizer' section"):
        distributed.deepspeed_config(recipe(strategy="deepspeed", zero_stage=3), str(path))


def test_fsdp2_plugin_from_recipe():
    r = recipe(strategy="fsdp", offload_params="cpu", reshard_after_forward=False).with_overrides(["train.precision=bf16"])
    p = distributed.fsdp_plugin(r)
    assert p.fsdp_version == 2 and p.reshard_after_forward is False
    assert type(p.cpu_offload).__name__ == "CPUOffloadPolicy"
    assert not p.activation_checkpointing
    assert str(p.mixed_precision_policy.param_dtype) == "torch.bfloat16"
    assert str(p.mixed_precision_policy.reduce_dtype) == "torch.float32"


def test_shipped_accelerate_configs_agree_with_their_recipes():
    """Each recipes/accelerate/*.yaml names a recipe block in its comment; the fields line up."""
    import yaml
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "recipes/accelerate"
    z2 = yaml.safe_load((root / "deepspeed-zero2-offload.yaml").read_text())["deepspeed_config"]
    z3 = yaml.safe_load((root / "deepspeed-zero3.yaml").read_text())["deepspeed_config"]
    fsdp = yaml.safe_load((root / "fsdp2.yaml").read_text())["fsdp_config"]
    assert (z2["zero_stage"], z2["offload_optimizer_device"]) == (2, "cpu")
    assert (z3["zero_stage"], z3["offload_param_device"]) == (3, "none")
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_transformer_layer_cls_to_wrap"] == "Block"
    nvme = json.loads((root / "zero3-nvme.json").read_text())
    r = recipe(strategy="deepspeed", zero_stage=3, offload_optimizer="nvme", offload_params="nvme",
               nvme_path="/local_nvme")
    cfg = distributed.deepspeed_config(r, str(root / "zero3-nvme.json"))
    assert cfg["zero_optimization"]["offload_param"]["buffer_count"] == 5
    assert cfg["gradient_clipping"] == 0.5 and nvme["gradient_clipping"] == "auto"
