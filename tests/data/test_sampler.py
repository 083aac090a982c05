import numpy as np
import pytest
import torch

from windtunnel.data.sampler import PackedSequences, TrainSampler, ValSampler

L = 8  # seq_len in these tests


def _shards(*n_seqs):
    """Shards of consecutive integers holding exactly n sequences each (n*L + 1 tokens)."""
    out, start = [], 0
    for n in n_seqs:
        out.append(np.arange(start, start + n * L + 1, dtype=np.uint32))
        start += n * L + 1
    return out


def _train(n_seqs=10, batch=3, grad_accum=1, seed=0):
    return TrainSampler(_shards(n_seqs), L, batch, grad_accum, seed)


def _first_tokens(batch: torch.Tensor) -> list[int]:
    return batch[:, 0].tolist()  # identifies the sequence (tokens are unique)


def test_windows_are_contiguous_and_stay_inside_shards():
    packed = PackedSequences(_shards(3, 2) + [np.zeros(0, dtype=np.uint32)], L, 2)
    assert packed.n_seqs == 5 and packed.n_tokens == 3 * L + 1 + 2 * L + 1
    rows = packed.gather(np.arange(5))
    assert rows.shape == (5, L + 1) and rows.dtype == torch.int64
    assert torch.equal(rows[:, 1:], rows[:, :-1] + 1)  # input [:-1], target [1:] shifted by one
    assert rows[:, 0].tolist() == [0, 8, 16, 25, 33]  # second shard starts at token 25


def test_batches_are_a_pure_function_of_seed_and_step():
    a, b = _train(), _train()
    ordered = [a.batch(s) for s in range(12)]
    jumbled = {s: b.batch(s) for s in [9, 3, 11, 0, 7, 7, 1]}  # resume at any step, in any order
    for s, batch in jumbled.items():
        assert torch.equal(batch, ordered[s])
    assert not torch.equal(_train(seed=1).batch(0), ordered[0])
    assert ordered[0].shape == (3, L + 1)


def test_micro_batches_and_ranks_follow_the_slot_formula():
    flat = _train(n_seqs=50, batch=2)
    accum = _train(n_seqs=50, batch=2, grad_accum=3)
    world = 2
    for step in range(4):
        for micro in range(3):
            for rank in range(world):
                slot_batch = (step * 3 + micro) * world + rank
                assert torch.equal(accum.batch(step, micro, rank, world), flat.batch(slot_batch))


def test_ranks_get_disjoint_sequences_within_an_epoch():
    sampler = _train(n_seqs=48, batch=3)
    seen = [seq for step in range(4) for rank in range(4) for seq in _first_tokens(sampler.batch(step, 0, rank, 4))]
    assert len(seen) == 48 and len(set(seen)) == 48


def test_every_epoch_covers_every_sequence_once():
    sampler = _train(n_seqs=10, batch=3)  # batches straddle epoch boundaries
    order = [seq for step in range(10) for seq in _first_tokens(sampler.batch(step))]
    epochs = [order[0:10], order[10:20], order[20:30]]
    for epoch in epochs:
        assert sorted(epoch) == [i * L for i in range(10)]
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_bad_micro_or_rank_is_rejected():
    with pytest.raises(ValueError, match="micro=2"):
        _train(grad_accum=2).batch(0, micro=2)
    with pytest.raises(ValueError, match="rank=2"):
        _train().batch(0, rank=2, world=2)


def test_train_needs_one_full_sequence():
    with pytest.raises(ValueError, match="too few for one sequence"):
        TrainSampler([np.arange(L, dtype=np.uint16)], L, 2, 1, 0)


def test_val_batches_are_fixed_capped_and_wrap():
    val = ValSampler(_shards(5), L, batch_size=2, eval_batches=8)
    batches = val.batches()
    assert len(batches) == 3  # ceil(5 / 2): every sequence once, not eight batches
    assert [_first_tokens(b) for b in batches] == [[0, 8], [16, 24], [32, 0]]  # last one wraps
    assert all(torch.equal(x, y) for x, y in zip(batches, val.batches()))
    assert len(val.batches(n=1)) == 1


def test_val_batches_split_evenly_across_ranks():
    val = ValSampler(_shards(5), L, batch_size=2, eval_batches=8)
    per_rank = [val.batches(rank=r, world=2) for r in range(2)]
    assert [len(b) for b in per_rank] == [2, 2]  # 3 batches padded to 4 so ranks stay in step
    assert _first_tokens(per_rank[0][0]) == [0, 8] and _first_tokens(per_rank[1][0]) == [16, 24]


def test_empty_val_gives_no_batches():
    assert ValSampler([], L, batch_size=2, eval_batches=4).batches() == []


@pytest.mark.parametrize("world, grad_accum, batch", [(1, 4, 2), (2, 2, 2), (4, 1, 2), (2, 1, 4), (1, 1, 8), (8, 1, 1)])
def test_a_step_trains_on_the_same_sequences_whatever_the_world_size(world, grad_accum, batch):
    """Global batch 8: every (world, grad_accum, batch_size) split reads the same 8 sequences per step,
    so a run saved with 2 processes resumes with 1 (grad_accum doubled) on the same data."""
    reference = _train(n_seqs=13, batch=8)  # one process, one micro-batch; 13 sequences: epochs wrap mid-step
    sampler = _train(n_seqs=13, batch=batch, grad_accum=grad_accum)
    for step in range(5):
        union = torch.cat([sampler.batch(step, micro, rank, world)
                           for micro in range(grad_accum) for rank in range(world)])
        assert sorted(_first_tokens(union)) == sorted(_first_tokens(reference.batch(step)))
    assert sampler.slots(3, grad_accum - 1, world - 1, world)[-1] == 4 * 8 - 1  # last slot of step 3


def test_changing_the_global_batch_changes_the_data():
    assert not torch.equal(_train(n_seqs=50, batch=4).batch(1), _train(n_seqs=50, batch=8).batch(1)[:4])
