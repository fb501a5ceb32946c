import pytest
import torch

from transformer_lens_mgp import PairedDataset, UsageError


def make(n=6, t=5, **overrides):
    kwargs = dict(
        clean_tokens=torch.arange(n * t).reshape(n, t) % 7,
        corrupted_tokens=(torch.arange(n * t).reshape(n, t) + 1) % 7,
        answer_tokens=torch.arange(n) % 7,
    )
    kwargs.update(overrides)
    return PairedDataset(**kwargs)


def test_defaults_score_the_last_position():
    ds = make()
    assert ds.answer_positions.tolist() == [4] * 6
    assert len(ds) == 6 and ds.seq_len == 5 and ds.metric == "logit_diff"


def test_answer_sets_padded_with_minus_one_are_accepted():
    ds = make(
        answer_tokens=torch.tensor([[1, 2, -1]] * 6), wrong_answer_tokens=torch.tensor([3] * 6)
    )
    assert ds.answer_tokens.shape == (6, 3)


def test_split_is_disjoint_seeded_and_complete():
    ds = make(
        n=10,
        clean_tokens=torch.arange(50).reshape(10, 5),
        corrupted_tokens=torch.arange(50).reshape(10, 5),
    )
    train, test = ds.split(0.3, seed=1)
    assert len(train) == 7 and len(test) == 3
    rows = {tuple(r) for r in torch.cat([train.clean_tokens, test.clean_tokens]).tolist()}
    assert len(rows) == 10
    again, _ = ds.split(0.3, seed=1)
    assert torch.equal(again.clean_tokens, train.clean_tokens)


def test_batches_cover_every_pair_once_and_cut_after_last_answer():
    ds = make(n=7, answer_positions=torch.tensor([1, 2, 1, 1, 2, 1, 1]))
    seen = []
    for batch in ds.batches(3, torch.Generator().manual_seed(0)):
        assert batch.seq_len == int(batch.answer_positions.max()) + 1
        seen += batch.answer_tokens.tolist()
    assert sorted(seen) == sorted(ds.answer_tokens.tolist())


def test_indexing_keeps_metadata():
    ds = make(name="x", metric="prob_diff")
    sub = ds[[0, 2]]
    assert len(sub) == 2 and sub.name == "x" and sub.metric == "prob_diff"


def test_batches_keep_their_order_unless_asked_to_shuffle():
    data = PairedDataset(torch.arange(12).view(6, 2), torch.arange(12).view(6, 2), torch.arange(6))
    assert torch.equal(torch.cat([b.answer_tokens for b in data.batches(4)]), torch.arange(6))
    shuffled = data.batches(6, generator=torch.Generator().manual_seed(0), shuffle=True)
    assert sorted(next(shuffled).answer_tokens.tolist()) == list(range(6))


def test_split_halves_have_their_own_meta():
    data = PairedDataset(
        torch.arange(12).view(6, 2), torch.arange(12).view(6, 2), torch.arange(6), meta={"a": 1}
    )
    train, test = data.split(0.5)
    train.meta["b"] = 2
    assert test.meta == {"a": 1} and data.meta == {"a": 1}


def test_roles_are_checked():
    from transformer_lens_mgp import UsageError

    tokens = torch.tensor([[1, 2, 3], [1, 4, 3]])
    base = dict(clean_tokens=tokens, corrupted_tokens=tokens.flip(0), answer_tokens=tokens[:, 0])
    with pytest.raises(UsageError, match="shape"):
        PairedDataset(**base, roles=("A",), role_positions=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(UsageError, match="after the answer position"):
        PairedDataset(
            **base,
            answer_positions=torch.tensor([1, 2]),
            roles=("A",),
            role_positions=torch.tensor([[2], [0]]),
        )
    with pytest.raises(UsageError, match="without role_positions"):
        PairedDataset(**base, roles=("A",))
    data = PairedDataset(**base, roles=["A"], role_positions=torch.tensor([[0], [1]]))
    assert data.roles == ("A",)


def test_role_slots_name_each_tokens_role_and_other_elsewhere():
    tokens = torch.tensor([[1, 2, 3, 4], [1, 4, 3, 5]])
    data = PairedDataset(tokens, tokens.flip(0), tokens[:, 0]).with_roles(
        ("A", "B"), torch.tensor([[2, 0], [1, 3]])
    )
    assert data.role_slots().tolist() == [[1, 2, 0, 2], [2, 0, 2, 1]]
    assert data[[1]].role_slots().tolist() == [[2, 0, 2, 1]]
    with pytest.raises(UsageError, match="no token roles"):
        PairedDataset(tokens, tokens, tokens[:, 0]).role_slots()
