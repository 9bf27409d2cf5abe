"""The requirement registry (``requirements.py``) stays in step with SPEC.md and the tests.

"Every MUST in protocol/SPEC.md has a test that would fail if the code broke it": these tests
check the bookkeeping half of that rule. Every ``[M-…]`` id of SPEC.md has exactly one entry,
no entry is stale, and every test an in-scope entry names exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.protocol.requirements import CLIENT, RELAY, RELAY_AND_CLIENT, REQUIREMENTS

ROOT = Path(__file__).parents[2]
SPEC = ROOT / "protocol" / "SPEC.md"
OUT_OF_SCOPE = {RELAY, CLIENT, RELAY_AND_CLIENT}
_ID = re.compile(r"\[(M-[A-Z]+-\d+)\]")
_NODE = re.compile(r"(tests/[\w/]+\.py)::(\w+)(\[[^\]]*\])?")


def _spec_ids() -> set[str]:
    return set(_ID.findall(SPEC.read_text(encoding="utf-8")))


def _node_ids(entry: str) -> list[str]:
    return entry.split(" | ")


def test_every_spec_requirement_has_exactly_one_entry() -> None:
    """Every ``[M-…]`` id in SPEC.md is a key of REQUIREMENTS, and every key is such an id."""
    spec_ids = _spec_ids()
    assert len(spec_ids) >= 90  # the parse found the requirements at all
    missing = sorted(spec_ids - set(REQUIREMENTS))
    stale = sorted(set(REQUIREMENTS) - spec_ids)
    assert (missing, stale) == ([], [])


def test_spec_index_lists_every_requirement() -> None:
    """The §14 "Requirement index" table lists exactly the ids used in the text."""
    text = SPEC.read_text(encoding="utf-8")
    index = text.split("## 14. Requirement index", 1)[1].split("\n## ", 1)[0]
    table_ids = set(re.findall(r"^\| (M-[A-Z]+-\d+) \|", index, flags=re.MULTILINE))
    assert table_ids == _spec_ids()


def test_entries_are_node_ids_or_an_owner() -> None:
    """Each entry names tests, or says which component owns the requirement; a relay or
    client requirement (``M-REL-``/``M-CLI-``) that names no tests belongs to the relay or the
    client (their suites test it)."""
    for requirement, entry in REQUIREMENTS.items():
        if requirement.startswith("M-REL-") and entry in OUT_OF_SCOPE:
            assert entry == RELAY, requirement
        elif requirement.startswith("M-CLI-") and entry in OUT_OF_SCOPE:
            assert entry == CLIENT, requirement
        if entry in OUT_OF_SCOPE:
            continue
        assert not entry.startswith("out of scope"), (requirement, entry)
        node_ids = _node_ids(entry)
        assert node_ids, requirement
        assert len(set(node_ids)) == len(node_ids), (requirement, "duplicate node id")
        for node_id in node_ids:
            assert _NODE.fullmatch(node_id), (requirement, node_id)


def test_named_tests_exist() -> None:
    """For every in-scope entry, each node id's file exists and defines its test function."""
    problems = []
    for requirement, entry in REQUIREMENTS.items():
        if entry in OUT_OF_SCOPE:
            continue
        for node_id in _node_ids(entry):
            match = _NODE.fullmatch(node_id)
            assert match is not None, (requirement, node_id)
            path = ROOT / match.group(1)
            name = match.group(2)
            if not path.is_file():
                problems.append(f"{requirement}: {node_id}: no file {match.group(1)}")
                continue
            source = path.read_text(encoding="utf-8")
            if not re.search(rf"^\s*(async\s+)?def {re.escape(name)}\(", source, re.MULTILINE):
                problems.append(f"{requirement}: {node_id}: no 'def {name}' in {match.group(1)}")
    assert problems == []


def test_new_requirement_tests_are_registered() -> None:
    """Every test in test_requirements.py starts its docstring with the id(s) it pins, and the
    registry lists it under each of those ids."""
    path = Path(__file__).with_name("test_requirements.py")
    module = ast.parse(path.read_text(encoding="utf-8"))
    tests = [
        node
        for node in module.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]
    assert tests
    for test in tests:
        docstring = ast.get_docstring(test) or ""
        lead = re.match(r"(\[M-[A-Z]+-\d+\])+", docstring)
        assert lead is not None, f"{test.name}: docstring must start with [M-…]"
        node_id = f"tests/protocol/test_requirements.py::{test.name}"
        for requirement in _ID.findall(lead.group(0)):
            assert requirement in REQUIREMENTS, (test.name, requirement)
            assert node_id in _node_ids(REQUIREMENTS[requirement]), (test.name, requirement)
