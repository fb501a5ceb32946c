"""Pairs from a file: JSON lines and CSV, every error naming its line and field, the whole
file checked before anything runs, and ``tl-mgp discover --data``."""

from __future__ import annotations

import json

import pytest
import torch

from transformer_lens_mgp import PairedDataset
from transformer_lens_mgp.core.errors import UsageError
from transformer_lens_mgp.core.pairs_file import read_pair_rows
from transformer_lens_mgp.models import load_model
from transformer_lens_mgp.testing.tiny import tiny_hf_model, tiny_tokenizer

GOOD = [
    {
        "clean": "When Mary and John went to the store , John gave a drink to",
        "corrupted": "When Anna and France went to the store , France gave a drink to",
        "answer": "Mary",
        "wrong": "John",
        "role_IO": 2,
        "role_END": 14,
    },
    {
        "clean": "When John and Mary went to the store , Mary gave a drink to",
        "corrupted": "When Paris and Anna went to the store , Anna gave a drink to",
        "answer": "John",
        "wrong": "Mary",
        "role_IO": 2,
        "role_END": 14,
    },
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return load_model(hf_model=tiny_hf_model("llama", len(tokenizer)), tokenizer=tokenizer)


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_jsonl_pairs_with_roles(model, tmp_path):
    data = PairedDataset.from_file(model, write_jsonl(tmp_path / "ioi.jsonl", GOOD))
    assert len(data) == 2 and data.name == "ioi"
    assert data.answer_tokens.tolist() == [
        model.to_single_token("Mary"),
        model.to_single_token("John"),
    ]
    assert data.wrong_answer_tokens is not None
    assert data.roles == ("IO", "END")
    assert data.role_positions.tolist() == [[2, 14], [2, 14]]
    assert torch.equal(data.clean_tokens[0], model.to_tokens(GOOD[0]["clean"])[0])


def test_csv_pairs_match_jsonl(model, tmp_path):
    lines = ["clean,corrupted,answer,wrong"] + [
        f'"{r["clean"]}","{r["corrupted"]}",{r["answer"]},{r["wrong"]}' for r in GOOD
    ]
    (tmp_path / "ioi.csv").write_text("\n".join(lines) + "\n")
    from_csv = PairedDataset.from_file(model, tmp_path / "ioi.csv")
    from_jsonl = PairedDataset.from_file(
        model,
        write_jsonl(
            tmp_path / "ioi.jsonl",
            [{k: v for k, v in r.items() if not k.startswith("role_")} for r in GOOD],
        ),
    )
    assert torch.equal(from_csv.clean_tokens, from_jsonl.clean_tokens)
    assert torch.equal(from_csv.answer_tokens, from_jsonl.answer_tokens)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": None}, "line 2: field 'answer' is missing"),
        ({"answer": "Mary John"}, "line 2: 'answer': answer 'Mary John' is 2 tokens"),
        ({"wrong": "Mary John"}, "line 2: 'wrong': answer 'Mary John' is 2 tokens"),
        ({"corrupted": "When Anna went"}, "line 2: 'corrupted' is 4 tokens, 'clean' is 15"),
        (
            {"clean": " ".join(["Mary"] * 80), "corrupted": " ".join(["John"] * 80)},
            "line 2: 'clean' is 81 tokens, over the model's context of 64",
        ),
        ({"role_IO": 40}, "line 2: 'role_IO' is 40, outside the clean prompt's 15 tokens"),
        ({"colour": "red"}, "line 2: unknown field 'colour'"),
    ],
)
def test_errors_name_the_line_and_the_field(model, tmp_path, change, message):
    bad = {**GOOD[1], **change}
    bad = {k: v for k, v in bad.items() if v is not None}
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD[0], bad])
    with pytest.raises(UsageError, match=message.replace("(", r"\(")) as err:
        PairedDataset.from_file(model, path)
    assert "\n" not in str(err.value)


def test_every_bad_line_is_reported_before_anything_runs(tmp_path):
    records = [GOOD[0]] + [{"clean": "x", "corrupted": "y"}] * 8
    with pytest.raises(UsageError, match=r"line 2: .*line 6: .*\(and 3 more\)"):
        read_pair_rows(write_jsonl(tmp_path / "pairs.jsonl", records))


def test_bad_files_are_refused(tmp_path):
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(UsageError, match=".jsonl or .csv"):
        read_pair_rows(tmp_path / "a.txt")
    with pytest.raises(FileNotFoundError, match="no pairs file"):
        read_pair_rows(tmp_path / "missing.jsonl")
    (tmp_path / "b.jsonl").write_text('{"clean": "a"\n')
    with pytest.raises(UsageError, match="line 1: not JSON"):
        read_pair_rows(tmp_path / "b.jsonl")
    (tmp_path / "c.csv").write_text("prompt,answer\nx,y\n")
    with pytest.raises(UsageError, match="line 1: the header lacks 'clean', 'corrupted'"):
        read_pair_rows(tmp_path / "c.csv")
    without_wrong = {k: v for k, v in GOOD[1].items() if k != "wrong"}
    with pytest.raises(UsageError, match="line 2: 'wrong' is given on some lines but not all"):
        read_pair_rows(write_jsonl(tmp_path / "d.jsonl", [GOOD[0], without_wrong]))


def test_answer_sets_in_json_lines(model, tmp_path):
    record = {**GOOD[0], "answer": ["Mary", "Anna"], "wrong": ["John", "Paris"]}
    data = PairedDataset.from_file(model, write_jsonl(tmp_path / "sets.jsonl", [record, record]))
    assert data.answer_tokens.shape == (2, 2)


def test_the_example_pairs_file_tokenises_on_smollm2(tokenizer_model):
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "agreement_pairs.jsonl"
    data = PairedDataset.from_file(tokenizer_model, path)
    assert len(data) == 360 and data.name == "agreement_pairs"
    assert set(data.answer_tokens.tolist()) == {
        tokenizer_model.to_single_token(" is"),
        tokenizer_model.to_single_token(" are"),
    }
