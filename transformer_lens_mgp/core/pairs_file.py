"""Prompt pairs from a ``.jsonl`` or ``.csv`` file, checked whole before anything runs.

One pair per JSON line or CSV row, with fields ``clean``, ``corrupted`` and ``answer`` (the
correct next token of the clean prompt), optionally ``wrong`` (a competing token), and
optionally one ``role_<NAME>`` field per token role, holding that role's token position in
the clean prompt as the model tokenises it (a BOS token, where the model prepends one,
is position 0). In JSON lines, ``answer`` and ``wrong`` may also be lists (a set of tokens).

Every error names the file's line and the field, and the whole file is checked first: a
bad line 900 stops the run before the model has done any work. This module reads and checks
fields; ``PairedDataset.from_rows`` checks the tokens.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingFileError, UsageError

REQUIRED = ("clean", "corrupted", "answer")
OPTIONAL = ("wrong",)
ROLE_PREFIX = "role_"
SUFFIXES = (".jsonl", ".csv")
_SHOWN = 5


@dataclass(frozen=True)
class PairRow:
    """One pair as the file gives it, with its line number for error messages."""

    line: int
    clean: str
    corrupted: str
    answer: str | tuple[str, ...]
    wrong: str | tuple[str, ...] | None
    roles: dict[str, int]


def read_pair_rows(path: str | Path) -> list[PairRow]:
    """The file's pairs, with every field present and of the right kind (no model needed)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise UsageError(
            f"{path}: pairs files are .jsonl or .csv, got {path.suffix or 'no suffix'!r}"
        )
    if not path.is_file():
        raise MissingFileError(f"no pairs file at {path}")
    records = _jsonl_records(path) if path.suffix == ".jsonl" else _csv_records(path)
    rows, problems = [], []
    for line, record in records:
        try:
            rows.append(_row(line, record))
        except UsageError as err:
            problems.append(f"line {line}: {err}")
    raise_if(path, problems)
    if not rows:
        raise UsageError(f"{path} holds no pairs")
    have_wrong = {row.wrong is not None for row in rows}
    role_sets = {tuple(sorted(row.roles)) for row in rows}
    if len(have_wrong) > 1:
        odd = next(r for r in rows if (r.wrong is not None) != (rows[0].wrong is not None))
        raise UsageError(f"{path} line {odd.line}: 'wrong' is given on some lines but not all")
    if len(role_sets) > 1:
        odd = next(r for r in rows if tuple(sorted(r.roles)) != tuple(sorted(rows[0].roles)))
        raise UsageError(f"{path} line {odd.line}: role fields differ from line {rows[0].line}'s")
    return rows


def _jsonl_records(path: Path):
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path} line {line}: not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise UsageError(
                f"{path} line {line}: expected a JSON object with fields {', '.join(REQUIRED)}"
            )
        yield line, record


def _csv_records(path: Path):
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [f for f in REQUIRED if f not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(
                f"{path} line 1: the header lacks {', '.join(map(repr, missing))} "
                f"(columns: {', '.join(REQUIRED)}, optional wrong, role_NAME)"
            )
        for record in reader:
            yield reader.line_num, {k: v for k, v in record.items() if v not in (None, "")}


def _row(line: int, record: dict) -> PairRow:
    unknown = [k for k in record if k not in REQUIRED + OPTIONAL and not k.startswith(ROLE_PREFIX)]
    if unknown:
        raise UsageError(
            f"unknown field {unknown[0]!r} (fields: {', '.join(REQUIRED)}, "
            "optional wrong, role_NAME)"
        )
    for key in REQUIRED:
        if key not in record:
            raise UsageError(f"field {key!r} is missing")
    for key in ("clean", "corrupted"):
        if not isinstance(record[key], str) or not record[key]:
            raise UsageError(f"field {key!r} must be a non-empty string")
    roles = {}
    for key, value in record.items():
        if key.startswith(ROLE_PREFIX):
            try:
                roles[key[len(ROLE_PREFIX) :]] = int(value)
            except (TypeError, ValueError):
                raise UsageError(f"field {key!r} must be a token position, got {value!r}") from None
    return PairRow(
        line,
        record["clean"],
        record["corrupted"],
        _tokens("answer", record["answer"]),
        _tokens("wrong", record["wrong"]) if "wrong" in record else None,
        roles,
    )


def _tokens(key: str, value) -> str | tuple[str, ...]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise UsageError(f"field {key!r} must be a string or a list of strings, got {value!r}")


def raise_if(where, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        raise UsageError(f"{where}: " + "; ".join(problems[:_SHOWN]) + more)
