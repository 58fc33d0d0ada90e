"""docs/engine-api.md is kept true: its headings are exactly lineas_engine.__all__, each with the
signature the code has."""

import re
from pathlib import Path

import lineas_engine
from tests.engine.api_doc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "engine-api.md"


def _headings() -> dict[str, str]:
    out = {}
    for line in DOC.read_text().splitlines():
        m = re.fullmatch(r"### `(.+)`", line)
        if m:
            name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", m.group(1)).group(0)
            assert name not in out, f"{name} documented twice"
            out[name] = m.group(1)
    return out


def test_doc_lists_exactly_the_public_names():
    doc = _headings()
    public = set(lineas_engine.__all__)
    assert not public - set(doc), f"public but not documented: {sorted(public - set(doc))}"
    assert not set(doc) - public, f"documented but not public: {sorted(set(doc) - public)}"


def test_doc_signatures_match_the_code():
    doc = _headings()
    wrong = {n: (doc[n], render(n, getattr(lineas_engine, n))) for n in lineas_engine.__all__
             if doc.get(n) != render(n, getattr(lineas_engine, n))}
    assert not wrong, "doc vs code:\n" + "\n".join(f"  {a}\n  {b}" for a, b in wrong.values())
