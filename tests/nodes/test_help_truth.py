"""The in-UI help tells the truth about every node of the pack:

- each description and tooltip has one source (nodes/_help.py), never a second text in the node's schema;
- no tooltip, and no help-page line about an input, calls a required input optional or an optional input
  required;
- each node's help page (web/docs/<node>.md) names every required input, in bold.

The checks are plain functions over the node data; the last tests feed each of them a broken text, so a
check that can no longer fail is caught too."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "web" / "docs"
CALLED_OPTIONAL = re.compile(r"(?i)\boptional\b")
CALLED_REQUIRED = re.compile(r"(?i)\b(required|needed|mandatory|must be connected)\b")


# -- the checks ----------------------------------------------------------------------------------------
def double_texts(schema, help_texts: dict, description: str | None) -> list[str]:
    """Texts written in the node's own (undocumented) schema: a second source next to nodes/_help.py, or
    one the table lacks. ``help_texts``: the table's tooltips of this node; ``description``: its description."""
    problems = []
    if schema.description and description:
        problems.append(f"{schema.node_id}: description in the schema and in nodes/_help.py")
    elif schema.description:
        problems.append(f"{schema.node_id}: description in the schema; write it in nodes/_help.py")
    for kind, items in (("input", schema.inputs or []), ("output", schema.outputs or [])):
        for item in items:
            key = item.id if kind == "input" else (item.display_name or item.id or item.io_type)
            if item.tooltip and key in help_texts:
                problems.append(f"{schema.node_id}.{key}: two texts ({kind} tooltip in the schema and in "
                                "nodes/_help.py)")
            elif item.tooltip:
                problems.append(f"{schema.node_id}.{key}: {kind} tooltip in the schema; write it in nodes/_help.py")
    return problems


def _inputs(info: dict) -> list[tuple[str, bool, str]]:
    """(name, required, tooltip) of every input, as /object_info reports them."""
    out = []
    for section in ("required", "optional"):
        for name, spec in (info["input"].get(section) or {}).items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, section == "required", opts.get("tooltip") or ""))
    return out


def _page_says(page: str, name: str) -> list[str]:
    """What the help page says right after each bold mention of ``name``: up to the next bold word or the
    end of its list item / paragraph."""
    blocks = re.split(r"\n\s*\n|\n(?=\s*- )", page)
    said = []
    for block in blocks:
        for m in re.finditer(rf"\*\*{re.escape(name)}\*\*", block):
            rest = block[m.end():]
            nxt = rest.find("**")
            said.append(rest if nxt < 0 else rest[:nxt])
    return said


def wording_problems(node_id: str, info: dict, page: str) -> list[str]:
    problems = []
    for name, required, tooltip in _inputs(info):
        wrong = CALLED_OPTIONAL if required else CALLED_REQUIRED
        what = "required input called optional" if required else "optional input called required"
        if wrong.search(tooltip):
            problems.append(f"{node_id}.{name}: {what} in its tooltip: {tooltip!r}")
        for text in _page_says(page, name):
            if wrong.search(text):
                problems.append(f"{node_id}.{name}: {what} in web/docs/{node_id}.md: {text.strip()!r}")
    return problems


def page_omissions(node_id: str, info: dict, page: str) -> list[str]:
    return [f"web/docs/{node_id}.md does not name the required input **{name}**"
            for name, required, _ in _inputs(info) if required and f"**{name}**" not in page]


# -- the pack's nodes ----------------------------------------------------------------------------------
def _ours(comfy) -> dict:
    return {k: v for k, v in comfy.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("Lineas")}


def _raw_schema(cls, monkeypatch):
    """The node's schema as its module writes it, before nodes/_help.py fills in the texts."""
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules[cls.__module__], "documented", lambda schema: schema)
        return cls.define_schema()


def _help_module(cls):
    return sys.modules[sys.modules[cls.__module__].documented.__module__]


def _page(node_id: str) -> str:
    page = PAGES / f"{node_id}.md"
    assert page.is_file(), page
    return page.read_text()


@pytest.mark.comfy
def test_each_text_has_one_source(comfy, monkeypatch):
    ours = _ours(comfy)
    assert len(ours) >= 7
    problems = []
    for node_id, cls in ours.items():
        help_ = _help_module(cls)
        problems += double_texts(_raw_schema(cls, monkeypatch), help_.TOOLTIPS.get(node_id, {}),
                                 help_.DESCRIPTIONS.get(node_id))
    assert not problems, "\n".join(problems)


@pytest.mark.comfy
def test_required_and_optional_inputs_are_called_what_they_are(comfy):
    problems = []
    for node_id, cls in _ours(comfy).items():
        problems += wording_problems(node_id, cls.GET_NODE_INFO_V1(), _page(node_id))
    assert not problems, "\n".join(problems)


@pytest.mark.comfy
def test_help_pages_name_every_required_input(comfy):
    problems = []
    for node_id, cls in _ours(comfy).items():
        problems += page_omissions(node_id, cls.GET_NODE_INFO_V1(), _page(node_id))
    assert not problems, "\n".join(problems)


@pytest.mark.comfy
def test_training_needs_its_conditioning(comfy):
    """The training node refuses to run without a CONDITIONING, so ComfyUI must see it as required."""
    info = _ours(comfy)["LineasTrainStyle"].GET_NODE_INFO_V1()
    assert "conditioning" in info["input"]["required"]
    assert "conditioning" not in (info["input"].get("optional") or {})


# -- each check fails on a broken text ---------------------------------------------------------------
def _info(required: dict, optional: dict) -> dict:
    def spec(tip):
        return ("STRING", {"tooltip": tip})

    return {"input": {"required": {k: spec(v) for k, v in required.items()},
                      "optional": {k: spec(v) for k, v in optional.items()}}}


def _schema(inputs: dict, description: str = ""):
    return SimpleNamespace(node_id="Node", description=description, outputs=[],
                           inputs=[SimpleNamespace(id=k, tooltip=v) for k, v in inputs.items()])


def test_double_texts_catches_a_second_text():
    assert not double_texts(_schema({"a": None}), {"a": "the a input"}, "what the node does")
    assert double_texts(_schema({"a": "also here"}), {"a": "the a input"}, "what the node does")
    assert double_texts(_schema({"a": None}, description="another"), {"a": "the a input"}, "what the node does")


def test_wording_problems_catches_a_wrong_claim():
    page = "# Node\n\n- **a**: the a input.\n- **b** (optional): the b input.\n"
    assert not wording_problems("Node", _info({"a": "the a input"}, {"b": "the b input"}), page)
    assert wording_problems("Node", _info({"a": "optional a input"}, {"b": "the b input"}), page)
    assert wording_problems("Node", _info({"a": "the a input"}, {"b": "required b input"}), page)
    wrong_page = page.replace("**a**:", "**a** (optional):")
    assert wording_problems("Node", _info({"a": "the a input"}, {"b": "the b input"}), wrong_page)


def test_page_omissions_catches_a_missing_required_input():
    info = _info({"a": "the a input", "c": "the c input"}, {"b": "the b input"})
    assert not page_omissions("Node", info, "- **a**, **c**: inputs")
    assert page_omissions("Node", info, "- **a**: an input; b and c are not named in bold")
