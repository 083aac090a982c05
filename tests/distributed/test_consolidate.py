"""model.safetensors with plain names from every checkpoint format (one process, no launcher)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from windtunnel import consolidate
from windtunnel.distributed.optimizer import _plain_models, _plain_weights
from windtunnel.models import build_model
from windtunnel.recipe import Recipe
from windtunnel.trainer import Trainer


def tiny_recipe(**train) -> Recipe:
    return Recipe.from_dict({"model": {"vocab_size": 40, "d_model": 16, "n_layers": 1, "n_heads": 2,
                                       "ffn_hidden": 32},
                             "train": {"steps": 2, "batch_size": 2, "seq_len": 8, "threads": 1, **train},
                             "logging": {"progress": False}})


def model_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(replace(tiny_recipe().model, max_seq_len=8)).state_dict()


def test_trainer_checkpoint_holds_plain_weights(tmp_path):
    data = [torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    trainer = Trainer(tiny_recipe(), train_data=data, out_dir=tmp_path)
    trainer.fit()
    weights = consolidate.load_weights(tmp_path / "checkpoints/step_00000002")
    live = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert weights.keys() == live.keys()
    for name, t in live.items():
        assert torch.equal(weights[name], t)


def test_ddp_prefix_is_stripped_on_save_and_load(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(3, 3))
        wrapped = DistributedDataParallel(model)
        assert next(iter(wrapped.state_dict())).startswith("module.")
        weights = [None]
        _plain_weights([wrapped], weights, str(tmp_path))
        assert list(weights[0]) == ["0.weight", "0.bias"]
        models = [wrapped]
        _plain_models(models, str(tmp_path))
        assert models[0] is model
    finally:
        dist.destroy_process_group()


def test_dcp_checkpoint_consolidates(tmp_path):
    import torch.distributed.checkpoint as dcp

    state = model_state()
    dcp.save({"model": state}, checkpoint_id=str(tmp_path / consolidate.FSDP_MODEL_DIR))
    weights = consolidate.load_weights(tmp_path)
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], v) for k, v in state.items())
    assert not list(tmp_path.glob("*.pt"))  # the temporary torch.save file is gone


def test_deepspeed_stage0_and_compile_prefix(tmp_path):
    state = model_state()
    tag = tmp_path / consolidate.DEEPSPEED_TAG
    tag.mkdir()
    torch.save({"module": {f"_orig_mod.{k}": v.bfloat16() for k, v in state.items()}},
               tag / "mp_rank_00_model_states.pt")
    weights = consolidate.load_weights(tmp_path)
    assert weights.keys() == state.keys()
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_shared_storage_and_missing(tmp_path):
    t = torch.ones(4)
    consolidate.write_safetensors({"a": t, "b": t}, tmp_path / "x.safetensors")  # tied weights
    with pytest.raises(FileNotFoundError, match="no model weights"):
        consolidate.consolidate_checkpoint(tmp_path / "empty")
