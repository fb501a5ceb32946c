"""Task builders on the real SmolLM2 tokenizer (tiny random weights: only tokens matter here)."""

from __future__ import annotations

import re

import pytest
import torch

from transformer_lens_mgp import tasks
from transformer_lens_mgp.core.data import PAD_ANSWER
from transformer_lens_mgp.tasks.gendered_pronouns import FEMALE_NAMES, MALE_NAMES
from transformer_lens_mgp.tasks.greater_than import CORRUPTED_YY

N = 48


@pytest.fixture(scope="module")
def model(tokenizer_model):
    return tokenizer_model


def prompt_pairs(data) -> list[tuple[list[int], list[int]]]:
    """Each pair's (clean, corrupted) prompt tokens, padding cut off."""
    ends = [int(p) + 1 for p in data.answer_positions]
    return [
        (data.clean_tokens[i, :end].tolist(), data.corrupted_tokens[i, :end].tolist())
        for i, end in enumerate(ends)
    ]


def changed_positions(clean: list[int], corrupted: list[int]) -> list[int]:
    return [j for j, (x, y) in enumerate(zip(clean, corrupted, strict=True)) if x != y]


def answer_set(row: torch.Tensor) -> set[int]:
    return {int(t) for t in row.view(-1) if t != PAD_ANSWER}


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_pairs_are_valid(model, task):
    data = tasks.TASKS[task](model, n=N, seed=0)
    assert len(data) == N
    assert data.name == task
    assert data.metric == ("prob_diff" if task == "gt" else "logit_diff")
    assert data.meta["n_dropped"] == 0
    pad = model.tokenizer.pad_token_id
    # pair by pair the same token length: padding starts at the same place in both streams
    for clean, corrupted in prompt_pairs(data):
        assert pad not in clean and pad not in corrupted
        assert clean != corrupted
    assert ((data.clean_tokens == pad) == (data.corrupted_tokens == pad)).all()
    for i in range(N):
        right, wrong = answer_set(data.answer_tokens[i]), answer_set(data.wrong_answer_tokens[i])
        assert right and wrong and not right & wrong
        for token in right | wrong:  # one token, decoding back to a string that is one token
            assert model.to_tokens(model.to_string(token), prepend_bos=False).shape[-1] == 1


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_deterministic_per_seed(model, task):
    build = tasks.TASKS[task]
    a, b, c = build(model, n=16, seed=3), build(model, n=16, seed=3), build(model, n=16, seed=4)
    for field in ("clean_tokens", "corrupted_tokens", "answer_tokens", "wrong_answer_tokens"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.clean_tokens, c.clean_tokens)


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_n_raises(model, task, n):
    with pytest.raises(ValueError, match="positive integer"):
        tasks.TASKS[task](model, n=n)


def test_ioi_corruption_uses_three_fresh_names(model):
    data = tasks.ioi(model, n=N, seed=1)
    for i, (clean, corrupted) in enumerate(prompt_pairs(data)):
        io, s = int(data.answer_tokens[i]), int(data.wrong_answer_tokens[i])
        assert io != s
        assert clean.count(io) == 1 and clean.count(s) == 2
        changed = changed_positions(clean, corrupted)
        assert sorted(clean[j] for j in changed) == sorted([io, s, s])  # only the names change
        fresh = [corrupted[j] for j in changed]
        assert len(set(fresh)) == 3 and not set(fresh) & {io, s}


def test_ioi_uses_both_name_orders(model):
    data = tasks.ioi(model, n=N, seed=0)
    first = []
    for i, clean in enumerate(c for c, _ in prompt_pairs(data)):
        io, s = int(data.answer_tokens[i]), int(data.wrong_answer_tokens[i])
        first.append(clean.index(io) < clean.index(s))
    assert any(first) and not all(first)


def test_ioi_custom_templates_and_names(model):
    names = ["Mary", "John", "Alice", "Peter", "Kate", "Xqzvwlk"]  # the last is several tokens
    template = "After {IO} and {S1} met, {S2} waved to"
    data = tasks.ioi(model, n=8, seed=0, templates=[template], names=names)
    assert data.meta["n_names"] == 5
    text = model.to_string(data.clean_tokens[0, : int(data.answer_positions[0]) + 1])
    assert re.fullmatch(r"After \w+ and \w+ met, \w+ waved to", text)
    with pytest.raises(ValueError, match="needs"):
        tasks.ioi(model, n=4, templates=["When {IO} and {S} went out, {S} said to"])
    with pytest.raises(ValueError, match="whitespace"):
        tasks.ioi(model, n=4, templates=[template + " "])
    with pytest.raises(ValueError, match="at least 5"):
        tasks.ioi(model, n=4, names=names[:4])


def test_gendered_pronouns_swap_gender(model):
    data = tasks.gendered_pronouns(model, n=N, seed=0)
    he, she = model.to_single_token(" he"), model.to_single_token(" she")
    tok = {model.to_single_token(" " + name): name for name in MALE_NAMES + FEMALE_NAMES}
    n_male = 0
    for i, (clean, corrupted) in enumerate(prompt_pairs(data)):
        changed = changed_positions(clean, corrupted)
        assert len(changed) == 1
        name, other = tok[clean[changed[0]]], tok[corrupted[changed[0]]]
        is_male = name in MALE_NAMES
        n_male += is_male
        assert (other in MALE_NAMES) != is_male
        assert int(data.answer_tokens[i]) == (he if is_male else she)
        assert int(data.wrong_answer_tokens[i]) == (she if is_male else he)
    assert 0 < n_male < N


def test_greater_than_sets_follow_the_start_year(model):
    data = tasks.greater_than(model, n=N, seed=0)
    assert data.meta["year_tokens"] == "digit"
    for i, (clean, corrupted) in enumerate(prompt_pairs(data)):
        text, text_corrupted = model.to_string(clean), model.to_string(corrupted)
        cc, yy = re.fullmatch(
            r"The \w+ lasted from the year (1\d)(\d\d) to the year \1", text
        ).groups()
        assert 11 <= int(cc) <= 17
        assert text_corrupted == text.replace(f"year {cc}{yy}", f"year {cc}{CORRUPTED_YY}")
        tens = int(yy[0])
        later = {model.to_string(t) for t in answer_set(data.answer_tokens[i])}
        earlier = {model.to_string(t) for t in answer_set(data.wrong_answer_tokens[i])}
        assert later == {str(d) for d in range(tens + 1, 10)}
        assert earlier == {str(d) for d in range(tens)}
        assert str(tens) not in later | earlier  # the equal tens digit is ambiguous


class PairTokenizerModel:
    """A stand-in with GPT-2's way of cutting years, " 1732" -> " 17" + "32"."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def to_tokens(self, text: str, prepend_bos: bool | None = None) -> torch.Tensor:
        pieces = re.findall(r" ?\d\d?| ?[A-Za-z']+|\s|[^\sA-Za-z\d]", text)
        return torch.tensor([[self.vocab.setdefault(p, len(self.vocab)) for p in pieces]])


def test_greater_than_with_two_digit_year_tokens():
    model = PairTokenizerModel()
    data = tasks.greater_than(model, n=32, seed=0)
    assert data.meta["year_tokens"] == "pair"
    assert data.answer_tokens.shape[1] > 10  # sets of two-digit years
    names = {v: k for k, v in model.vocab.items()}
    for i in range(len(data)):
        clean = [names[int(t)] for t in data.clean_tokens[i, : int(data.answer_positions[i]) + 1]]
        yy = int(clean[clean.index(" to") - 1])
        later = {int(names[t]) for t in answer_set(data.answer_tokens[i])}
        earlier = {int(names[t]) for t in answer_set(data.wrong_answer_tokens[i])}
        assert later == set(range(yy + 1, 100)) and earlier == set(range(yy))


def test_unsupported_year_tokenization_raises():
    model = PairTokenizerModel()
    model.to_tokens = lambda text, prepend_bos=None: torch.tensor([[len(text) % 7, 1, 2]])
    with pytest.raises(ValueError, match="1732"):
        tasks.greater_than(model, n=4)


def test_invalid_candidates_are_replaced_and_counted(model, monkeypatch):
    from transformer_lens_mgp.tasks import _common

    real, calls = _common.tokenize_pair, []

    def every_other_invalid(*args):
        calls.append(args)
        if len(calls) % 2:
            raise ValueError("lengths differ")
        return real(*args)

    monkeypatch.setattr(_common, "tokenize_pair", every_other_invalid)
    data = tasks.ioi(model, n=5, seed=0)
    assert len(data) == 5
    assert data.meta["n_dropped"] == 5 and data.meta["n_candidates"] == 10
    assert data.meta["dropped"][0] == "lengths differ"


def test_no_valid_candidates_raises(model, monkeypatch):
    from transformer_lens_mgp.tasks import _common

    def always_invalid(*args):
        raise ValueError("lengths differ")

    monkeypatch.setattr(_common, "tokenize_pair", always_invalid)
    with pytest.raises(ValueError, match="only 0 of 3 pairs were valid"):
        tasks.gendered_pronouns(model, n=3)


def test_tasks_registry():
    assert tasks.TASKS == {
        "ioi": tasks.ioi,
        "gp": tasks.gendered_pronouns,
        "gt": tasks.greater_than,
    }
    assert set(tasks.__all__) == {
        "TASKS",
        "ioi",
        "gendered_pronouns",
        "greater_than",
        "VocabularySplit",
        "vocabulary_split",
        "HOLDOUT",
        "TaskPairs",
        "split_pairs",
        "build",
        "check_task",
    }


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_full_model_does_the_tasks(smollm2, task):
    """SmolLM2 itself prefers the right answers on (nearly) every clean prompt."""
    from transformer_lens_mgp.core.metrics import task_metric

    model = smollm2
    data = tasks.TASKS[task](model, n=64, seed=0)
    with torch.no_grad():
        logits = model(data.clean_tokens)[torch.arange(len(data)), data.answer_positions]
        corrupted = model(data.corrupted_tokens)[torch.arange(len(data)), data.answer_positions]
    metric = task_metric(logits, data)
    assert (metric > 0).float().mean() > 0.9
    assert metric.mean() > task_metric(corrupted, data).mean()


def test_ioi_roles_point_at_the_names(model):
    data = tasks.ioi(model, n=N, seed=3)
    assert data.roles == ("IO", "S1", "S1+1", "S2", "END")
    for i in range(N):
        io, s1, s1_next, s2, end = data.role_positions[i].tolist()
        tokens = data.clean_tokens[i]
        assert tokens[io] == data.answer_tokens[i] and tokens[s1] == tokens[s2]
        assert tokens[s1] == data.wrong_answer_tokens[i]
        assert s1 < s2 < end and s1_next == s1 + 1 and end == data.answer_positions[i]
        # the corruption changes exactly the three names
        changed = changed_positions(*prompt_pairs(data)[i])
        assert sorted({io, s1, s2}) == changed


@pytest.mark.parametrize("task, role", [("gp", "NAME"), ("gt", "YY")])
def test_roles_point_at_the_corrupted_token(model, task, role):
    data = tasks.TASKS[task](model, n=N, seed=0)
    assert data.roles == (role, "END")
    for i, (clean, corrupted) in enumerate(prompt_pairs(data)):
        assert data.role_positions[i, 0] == changed_positions(clean, corrupted)[0]
        assert data.role_positions[i, 1] == data.answer_positions[i]


def test_roles_follow_subsets_and_never_change_the_fingerprint(model):
    from transformer_lens_mgp.training.checkpoint import dataset_fingerprint

    data = tasks.ioi(model, n=N, seed=0)
    part = data[[3, 1]]
    assert torch.equal(part.role_positions, data.role_positions[[3, 1]])
    bare = data.with_roles((), None)
    assert dataset_fingerprint(bare) == dataset_fingerprint(data)


def test_ioi_s2_swap_and_random_corruptions(model):
    abc, abb, rand = (tasks.ioi(model, n=N, seed=2, corruption=c) for c in ("abc", "abb", "random"))
    assert torch.equal(abc.clean_tokens, abb.clean_tokens)  # the clean prompts match
    assert torch.equal(abc.clean_tokens, rand.clean_tokens)
    for i, (clean, corrupted) in enumerate(prompt_pairs(abb)):
        io, s = int(abb.answer_tokens[i]), int(abb.wrong_answer_tokens[i])
        changed = changed_positions(clean, corrupted)
        assert len(changed) == 1 and clean[changed[0]] == s and corrupted[changed[0]] == io
    # independent draws: unlike ABC, some mention repeats another or a clean name
    overlaps = 0
    for i, (clean, corrupted) in enumerate(prompt_pairs(rand)):
        io, s = int(rand.answer_tokens[i]), int(rand.wrong_answer_tokens[i])
        idx = [clean.index(io), clean.index(s), len(clean) - 1 - clean[::-1].index(s)]
        drawn = [corrupted[j] for j in idx]
        overlaps += len(set(drawn)) < 3 or bool(set(drawn) & {io, s})
    assert overlaps > 0
    assert rand.meta["corruption"] == "random" and abb.meta["corruption"] == "abb"
    with pytest.raises(ValueError, match="corruption"):
        tasks.ioi(model, n=4, corruption="xyz")


@pytest.mark.parametrize("task", ["ioi", "gp", "gt"])
def test_vocabulary_split_keeps_templates_and_words_apart(model, task):
    split = tasks.vocabulary_split(task, fraction=0.25, seed=3)
    assert set(split.train) == set(split.held_out)
    for name in split.train:
        assert split.train[name] and split.held_out[name], name
        assert not set(split.train[name]) & set(split.held_out[name]), name
    builder = tasks.TASKS[task]
    seen = builder(model, n=16, seed=0, **split.train)
    unseen = builder(model, n=16, seed=1, **split.held_out)
    text = {model.to_string(t) for t in seen.clean_tokens}
    other = {model.to_string(t) for t in unseen.clean_tokens}
    assert not text & other
    assert tasks.vocabulary_split(task, 0.25, 3) == split  # seeded


def test_ioi_split_holds_out_whole_frames(model):
    from transformer_lens_mgp.tasks.ioi import frame_of

    split = tasks.vocabulary_split("ioi")
    train = {frame_of(t) for t in split.train["templates"]}
    held = {frame_of(t) for t in split.held_out["templates"]}
    assert not train & held and len(split.held_out["templates"]) == 2 * len(held)


def test_gp_and_gt_take_templates_and_check_them(model):
    gp = tasks.gendered_pronouns(model, n=8, templates=["Then {name} smiled, because"])
    assert all(
        model.to_string(t[: int(p) + 1]).startswith("Then ")
        for t, p in zip(gp.clean_tokens, gp.answer_positions, strict=True)
    )
    with pytest.raises(ValueError, match="fields"):
        tasks.gendered_pronouns(model, n=4, templates=["Then {person} smiled, because"])
    from transformer_lens_mgp.tasks.greater_than import TEMPLATES

    default = tasks.greater_than(model, n=8, seed=0)
    first = tasks.greater_than(model, n=8, seed=0, templates=TEMPLATES[:1])
    assert torch.equal(default.clean_tokens, first.clean_tokens)
    mixed = tasks.greater_than(model, n=32, seed=0, templates=TEMPLATES)
    assert mixed.meta["n_templates"] == len(TEMPLATES)
    assert len({model.to_string(t).split()[2] for t in mixed.clean_tokens}) > 1
    with pytest.raises(ValueError, match="needs"):
        tasks.greater_than(model, n=4, templates=["From {cc}{yy} to {cc}"])


@pytest.mark.parametrize("task", ["ioi", "gp", "gt"])
def test_split_pairs_tests_on_frames_the_fit_never_saw(model, task):
    pairs = tasks.split_pairs(task, model, n=40, seed=0, test_fraction=0.25)
    assert (len(pairs.train), len(pairs.test), len(pairs.unseen)) == (30, 10, 10)
    split = tasks.vocabulary_split(task, tasks.HOLDOUT, seed=0)
    assert pairs.vocabulary == split
    assert pairs.train.meta["n_templates"] == len(split.train["templates"])
    assert pairs.unseen.meta["n_templates"] == len(split.held_out["templates"])
    seen = {model.to_string(t) for t in pairs.train.clean_tokens}
    assert not seen & {model.to_string(t) for t in pairs.unseen.clean_tokens}
    assert not seen & {model.to_string(t) for t in pairs.test.clean_tokens}
