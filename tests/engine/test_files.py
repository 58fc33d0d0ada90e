"""Steering files: exact round trip, atomic writes, and clear errors for every kind of bad file."""

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import save as st_save

from lineas_engine import (
    FORMAT_VERSION,
    IncompatibleSteeringError,
    SiteSpec,
    Steering,
    SteeringFileError,
    check_compatible,
    find_sites,
    load_steering,
    model_fingerprint,
    save_steering,
    site_specs,
)


def _steering():
    s = Steering({"a.b": SiteSpec(4), "c": SiteSpec(3, 1)})
    with torch.no_grad():
        s.weight("a.b").copy_(torch.tensor([1.5, 0.25, 1.0, -2.0]))
        s.bias("c").copy_(torch.tensor([0.1, -0.3, 1e-8]))
    return s


def test_round_trip_exact(tmp_path):
    s = _steering()
    path = save_steering(tmp_path / "x.safetensors", s, fingerprint={"architecture": "Toy"},
                         config={"lr": 0.1}, training={"steps": 3}, extra={"note": "hi"})
    loaded, meta = load_steering(path)
    assert loaded.specs == s.specs
    for k, v in s.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert meta.fingerprint == {"architecture": "Toy"} and meta.config == {"lr": 0.1}
    assert meta.training == {"steps": 3} and meta.extra == {"note": "hi"} and meta.format_version == FORMAT_VERSION
    # deterministic bytes
    again = save_steering(tmp_path / "y.safetensors", s, fingerprint={"architecture": "Toy"},
                          config={"lr": 0.1}, training={"steps": 3}, extra={"note": "hi"})
    assert path.read_bytes() == again.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = save_steering(tmp_path / "x.safetensors", _steering())
    good = path.read_bytes()
    with pytest.raises(SteeringFileError, match="JSON"):
        save_steering(path, _steering(), extra={"bad": object()})
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
    with pytest.raises(SteeringFileError, match="does not exist"):
        save_steering(tmp_path / "missing" / "x.safetensors", _steering())


def _write(tmp_path, tensors, meta):
    md = {"format": "pt"}
    if meta is not None:
        md["lineas"] = meta if isinstance(meta, str) else json.dumps(meta)
    p = tmp_path / "bad.safetensors"
    p.write_bytes(st_save(tensors, metadata=md))
    return p


def _good_meta():
    return {"format_version": 1, "engine_version": "0.1.0", "sites": {"a": {"dim": 2, "channel_axis": -1}}}


def _good_tensors():
    return {"scale.a": torch.ones(2), "shift.a": torch.zeros(2)}


@pytest.mark.parametrize("tensors,meta,match", [
    (_good_tensors(), None, "no 'lineas' metadata"),
    (_good_tensors(), "{not json", "not valid JSON"),
    (_good_tensors(), "[1, 2]", "must be a JSON object"),
    (_good_tensors(), {**_good_meta(), "format_version": "1"}, "format_version must be an integer"),
    (_good_tensors(), {**_good_meta(), "format_version": 99}, "upgrade lineas"),
    (_good_tensors(), {**_good_meta(), "sites": {}}, "non-empty"),
    (_good_tensors(), {**_good_meta(), "sites": {"a": 2}}, "must map to"),
    (_good_tensors(), {**_good_meta(), "sites": {"a": {"dim": "2"}}}, "positive int"),
    (_good_tensors(), {**_good_meta(), "sites": {"a": {"dim": 2, "channel_axis": 2}}}, "channel_axis"),
    (_good_tensors(), {**_good_meta(), "config": [1]}, "'config' must be an object"),
    ({"scale.a": torch.ones(3), "shift.a": torch.zeros(2)}, _good_meta(), r"shape \(3,\)"),
    ({"scale.a": torch.ones(2)}, _good_meta(), "missing"),
    ({**_good_tensors(), "scale.b": torch.ones(2)}, _good_meta(), "extra"),
    ({"scale.a": torch.tensor([1.0, float("nan")]), "shift.a": torch.zeros(2)}, _good_meta(), "finite"),
    ({"scale.a": torch.ones(2, dtype=torch.long), "shift.a": torch.zeros(2)}, _good_meta(), "finite floats"),
])
def test_bad_metadata_and_tensors(tmp_path, tensors, meta, match):
    with pytest.raises(SteeringFileError, match=match):
        load_steering(_write(tmp_path, tensors, meta))


def test_truncated_and_garbage_files(tmp_path):
    good = save_steering(tmp_path / "g.safetensors", _steering()).read_bytes()
    for cut in (0, 5, 8, 40, len(good) // 2, len(good) - 1):
        p = tmp_path / f"t{cut}.safetensors"
        p.write_bytes(good[:cut])
        with pytest.raises(SteeringFileError):
            load_steering(p)
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(os.urandom(300))
    with pytest.raises(SteeringFileError):
        load_steering(p)
    with pytest.raises(SteeringFileError, match="does not exist"):
        load_steering(tmp_path / "nope.safetensors")


@pytest.mark.filterwarnings("ignore:.*unknown metadata")
def test_fuzz_random_byte_flips_never_crash_unexpectedly(tmp_path):
    good = bytearray(save_steering(tmp_path / "g.safetensors", _steering()).read_bytes())
    g = torch.Generator().manual_seed(0)
    for i in range(60):
        data = bytearray(good)
        for pos in torch.randint(0, len(data), (3,), generator=g).tolist():
            data[pos] = (data[pos] + 1 + i) % 256
        p = tmp_path / "f.safetensors"
        p.write_bytes(bytes(data))
        try:
            load_steering(p)
        except SteeringFileError:
            pass


def test_unknown_metadata_warns(tmp_path):
    meta = {**_good_meta(), "from_the_future": {"x": 1}}
    with pytest.warns(UserWarning, match="from_the_future"):
        s, _ = load_steering(_write(tmp_path, _good_tensors(), meta))
    assert s.sites == ["a"]


def test_check_compatible_names_every_mismatch(tiny_llama, tiny_gemma3):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    s = Steering({**specs, "model.layers.0.mlp.up_proj": SiteSpec(5)})
    fp = model_fingerprint(tiny_llama)
    assert fp["architecture"] == "LlamaForCausalLM" and fp["num_parameters"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_compatible(Steering(specs), tiny_llama, fingerprint=fp)
    with pytest.raises(IncompatibleSteeringError, match="width 64 here but 5"):
        check_compatible(s, tiny_llama, fingerprint=fp)
    msg = "LlamaForCausalLM model, this is a Gemma3ForCausalLM.*1 of its 3 sites"
    with pytest.raises(IncompatibleSteeringError, match=msg):
        check_compatible(Steering(specs), tiny_gemma3, fingerprint=fp)


def test_load_checks_against_the_model(tmp_path, tiny_llama, tiny_gemma3):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    path = save_steering(tmp_path / "s.safetensors", Steering(specs), fingerprint=model_fingerprint(tiny_llama))
    s, _ = load_steering(path, model=tiny_llama)
    assert s.specs == specs
    with pytest.raises(IncompatibleSteeringError, match="trained on a LlamaForCausalLM"):
        load_steering(path, model=tiny_gemma3)
