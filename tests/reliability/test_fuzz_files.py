"""Seeded fuzz over mutated steering files: truncations, bit flips in the header and in the tensor data,
random byte overwrites, a forged header length, and crafted metadata (type swaps, huge numbers, deleted
or added keys and sites, with and without a recomputed checksum). Every mutant is either refused with a
LineasError or loads to exactly the original tensors."""

from __future__ import annotations

import copy
import json
import random
import warnings

import pytest
import torch
from safetensors.torch import save as st_save

from lineas_engine import LineasError, SiteSpec, Steering, load_steering, save_steering
from lineas_engine.files import _checksum

SEED = 12


def _original(tmp_path):
    s = Steering({"model.layers.0.norm": SiteSpec(6), "model.layers.1.norm": SiteSpec(6), "unet.gn": SiteSpec(4, 1)})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for site in s.sites:
            s.weight(site).copy_(1 + 0.3 * torch.randn(s.specs[site].dim, generator=g))
            s.bias(site).copy_(0.5 * torch.randn(s.specs[site].dim, generator=g))
    path = save_steering(tmp_path / "orig.safetensors", s,
                         fingerprint={"architecture": "Toy", "num_parameters": 123, "structure_sha256": "ab" * 8},
                         config={"lr": 0.1, "steps": 10}, training={"losses": [1.0, 0.5]},
                         extra={"training_text_hashes": ["0123456789abcdef", "fedcba9876543210"]})
    return s, path.read_bytes()


def _split(data: bytes) -> tuple[int, dict]:
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8 : 8 + n])


def _rebuild(data: bytes, header: dict) -> bytes:
    n, _ = _split(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return len(blob).to_bytes(8, "little") + blob + data[8 + n :]


_ODD_VALUES = [None, True, 0, -1, 2**64, 10**13, 1e308, "x", "", [], [1, 2], {}, {"dim": 2}, "[" * 50]


def _craft_meta(rng: random.Random, data: bytes, recompute: bool) -> bytes:
    """Parse the 'lineas' JSON, change one thing in it, write it back (optionally re-signing it)."""
    n, header = _split(data)
    meta = json.loads(header["__metadata__"]["lineas"])
    kind = rng.randrange(7)
    if kind == 0:  # swap a top-level value for an odd one
        meta[rng.choice(sorted(meta))] = copy.deepcopy(rng.choice(_ODD_VALUES))
    elif kind == 1:  # delete a key
        del meta[rng.choice(sorted(meta))]
    elif kind == 2:  # odd site spec values
        site = rng.choice(sorted(meta["sites"]))
        meta["sites"][site][rng.choice(["dim", "channel_axis"])] = copy.deepcopy(rng.choice(_ODD_VALUES))
    elif kind == 3:  # rename / add / drop a site
        site = rng.choice(sorted(meta["sites"]))
        spec = meta["sites"].pop(site)
        op = rng.randrange(3)
        if op == 0:
            meta["sites"][rng.choice(["", " ", "x", site + "x", "model__layers__0__norm"])] = spec
        elif op == 1:
            meta["sites"][site] = spec
            meta["sites"]["extra.site"] = {"dim": 2}
    elif kind == 4:  # format version games
        meta["format_version"] = rng.choice([1, 2, 3, 0, -1, "2", 2.0, None])
    elif kind == 5:  # an unknown key (a newer writer): harmless
        meta["new_key_" + str(rng.randrange(100))] = {"x": 1}
    else:  # the metadata string itself mangled
        raw = header["__metadata__"]["lineas"]
        i = rng.randrange(len(raw))
        header["__metadata__"]["lineas"] = raw[:i] + rng.choice(['"', "}", "\\", "\x00", "9" * 40, ""]) + raw[i + 1 :]
        return _rebuild(data, header)
    if recompute and isinstance(meta, dict):  # a forger who re-signs: must still be refused or harmless
        try:
            tensors = {k: torch.frombuffer(bytearray(data[8 + n + v["data_offsets"][0] : 8 + n + v["data_offsets"][1]]),
                                           dtype=torch.float32) for k, v in header.items() if k != "__metadata__"}
            meta["checksum"] = _checksum(meta, tensors)
        except (TypeError, ValueError):
            pass
    header["__metadata__"]["lineas"] = json.dumps(meta)
    return _rebuild(data, header)


def _mutants(data: bytes, count: int):
    rng = random.Random(SEED)
    n, header = _split(data)
    for i in range(count):
        kind = i % 8
        b = bytearray(data)
        if kind == 0:  # truncation
            yield "truncate", bytes(b[: rng.randrange(len(b))])
        elif kind == 1:  # one bit in the header
            pos = rng.randrange(8, 8 + n)
            b[pos] ^= 1 << rng.randrange(8)
            yield "header-bit", bytes(b)
        elif kind == 2:  # one bit in the tensor data
            pos = rng.randrange(8 + n, len(b))
            b[pos] ^= 1 << rng.randrange(8)
            yield "data-bit", bytes(b)
        elif kind == 3:  # several random bytes anywhere
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            yield "bytes", bytes(b)
        elif kind == 4:  # the header length field
            forged = rng.choice([0, 1, n - 1, n + 1, n + 8, len(b), 2**40, 2**64 - 1])
            yield "length", forged.to_bytes(8, "little") + bytes(b[8:])
        elif kind == 5:
            yield "meta", _craft_meta(rng, data, recompute=False)
        elif kind == 6:
            yield "meta-resigned", _craft_meta(rng, data, recompute=True)
        else:  # a header entry changed (dtype / shape / offsets) with the JSON kept valid
            h = copy.deepcopy(header)
            name = rng.choice([k for k in h if k != "__metadata__"])
            field = rng.choice(["dtype", "shape", "data_offsets"])
            h[name][field] = copy.deepcopy(rng.choice(
                [["F16"], "F16", "BF16", "I32", [6], [2**40], [-1], [0, 24], [24, 0], [0, 2**62], [3, 6], None]))
            yield "entry", _rebuild(data, h)


def _load_mutant(path, blob: bytes, kind: str, i: int):
    """The steering a mutant loads to, or None when it is refused with a one-line LineasError; any other
    exception fails the test."""
    path.write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load_steering(path)[0]
        except LineasError as e:
            assert "\n" not in str(e), (kind, i, str(e))
            return None
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"mutant {i} ({kind}) raised {type(e).__name__}: {e}")


def test_fuzzed_steering_files_are_refused_or_identical(tmp_path):
    original, data = _original(tmp_path)
    expected = {k: v.clone() for k, v in original.state_dict().items()}
    outcome: dict[str, list[int]] = {}
    path = tmp_path / "mutant.safetensors"
    for i, (kind, blob) in enumerate(_mutants(data, 480)):
        loaded = _load_mutant(path, blob, kind, i)
        if loaded is None:
            outcome.setdefault(kind, [0, 0])[0] += 1
            continue
        got = loaded.state_dict()
        assert got.keys() == expected.keys(), (kind, i)
        for k in expected:
            assert torch.equal(got[k], expected[k]), (kind, i, k)
        assert loaded.specs == original.specs, (kind, i)
        outcome.setdefault(kind, [0, 0])[1] += 1
    # the test is not vacuous: every kind was produced, tensor bit flips are always caught, and some
    # mutants (e.g. harmless unknown keys, a flipped padding space) load unchanged
    assert set(outcome) == {"truncate", "header-bit", "data-bit", "bytes", "length", "meta", "meta-resigned", "entry"}
    assert outcome["data-bit"] == [60, 0] and outcome["truncate"] == [60, 0]
    assert sum(ok for _, ok in outcome.values()) > 0
    assert sum(bad for bad, _ in outcome.values()) > 300


def test_fuzz_also_holds_for_format_1_files(tmp_path):
    """Format 1 files have no checksum: a data bit flip may load, but never as a crash or a
    non-finite map; everything else malformed is refused."""
    meta = json.dumps({"format_version": 1, "engine_version": "0.1.0", "sites": {"a": {"dim": 3, "channel_axis": -1}}})
    data = st_save({"scale.a": torch.tensor([1.0, 2.0, 3.0]), "shift.a": torch.tensor([0.0, 0.5, -0.5])},
                   metadata={"lineas": meta})
    path = tmp_path / "m.safetensors"
    for i, (kind, blob) in enumerate(_mutants(data, 240)):
        loaded = _load_mutant(path, blob, kind, i)
        if loaded is None:
            continue
        assert all(torch.isfinite(t).all() for t in loaded.state_dict().values()), (kind, i)
