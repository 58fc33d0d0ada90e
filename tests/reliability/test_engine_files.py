"""Bad input to the engine: steering files that lie about their sizes, crafted metadata and headers,
non-finite maps, the structure fingerprint, concurrent and numbered writers, non-regular targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from lineas_engine import (
    FORMAT_VERSION,
    IncompatibleSteeringError,
    LineasError,
    SiteSpec,
    Steering,
    SteeringFileError,
    load_steering,
    pool,
    save_steering,
)

REPO = Path(__file__).resolve().parents[2]


def _steering(dim: int = 4) -> Steering:
    s = Steering({"a": SiteSpec(dim), "b.c": SiteSpec(dim, 1)})
    with torch.no_grad():
        s.weight("a").copy_(torch.linspace(0.5, 1.5, dim))
        s.bias("b.c").copy_(torch.linspace(-1, 1, dim))
    return s


def _raw_file(path: Path, header: dict, data: bytes = b"") -> Path:
    """A safetensors file written byte by byte (to craft headers the library would never write)."""
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return path


def _v1_meta(sites: dict) -> str:
    return json.dumps({"format_version": 1, "engine_version": "0.1.0", "sites": sites})


# -- memory from a small file --------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [200_000_000, 10**13, 2**70])
def test_huge_dim_in_metadata_is_refused_before_allocating(tmp_path, dim):
    meta = _v1_meta({"a": {"dim": dim, "channel_axis": -1}})
    p = tmp_path / "big.safetensors"
    p.write_bytes(st_save({"scale.a": torch.ones(2), "shift.a": torch.zeros(2)}, metadata={"lineas": meta}))
    assert p.stat().st_size < 2048
    with pytest.raises(SteeringFileError, match="shape"):
        load_steering(p)


@pytest.mark.slow
def test_huge_dim_allocates_nothing(tmp_path):
    """The 2 KB file claiming 200,000,000 channels: measured in a fresh process, the peak memory does not move
    (reading the declared size would allocate 1.5 GB). Slow (a child process imports torch); the fast test
    above shows the same refusal comes before any allocation (for 10**13 and 2**70 too, which torch cannot
    allocate at all)."""
    p = tmp_path / "big.safetensors"
    p.write_bytes(st_save({"scale.a": torch.ones(2), "shift.a": torch.zeros(2)},
                          metadata={"lineas": _v1_meta({"a": {"dim": 200_000_000, "channel_axis": -1}})}))
    code = ("import resource, sys\nfrom lineas_engine import load_steering, LineasError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    load_steering(sys.argv[1])\nexcept LineasError:\n    pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    res = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) < 50 * 1024  # KiB: well under the 780 MB of 200M float32


def test_big_model_file_as_steering_reads_only_the_header(tmp_path):
    """A 1 GB safetensors model (sparse file) passed as a steering: refused after reading its header only."""
    p = tmp_path / "model.safetensors"
    n = 2**28  # 256M float32 = 1 GiB
    _raw_file(p, {"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size + 4 * n)
    tracemalloc.start()
    try:
        with pytest.raises(SteeringFileError, match="no 'lineas' metadata"):
            load_steering(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# -- crafted metadata, a site named "" -----------------------------------------------------------------------
@pytest.mark.parametrize("metadata,match", [
    (["lineas", "x"], "metadata is a list"),
    ("lineas", "metadata is a str"),
    ({"lineas": ["a"]}, "no 'lineas' metadata"),
    ({"lineas": json.dumps(["a", "b"])}, "must be a JSON object"),
    ({"lineas": json.dumps("a string")}, "must be a JSON object"),
    ({"lineas": "[" * 100_000}, "not valid JSON"),
    ({"lineas": _v1_meta({"": {"dim": 2}})}, "empty"),
    ({"lineas": _v1_meta({" a": {"dim": 2}})}, "surrounding spaces"),
    ({"lineas": _v1_meta({"a": {"dim": 2.0}})}, "positive int"),
    ({"lineas": _v1_meta({"a": {"dim": True}})}, "positive int"),
    ({"lineas": json.dumps({"format_version": 0, "sites": {"a": {"dim": 2}}})}, "format_version"),
    ({"lineas": json.dumps({"format_version": 2, "sites": {"a": {"dim": 2}}})}, "checksum"),
])
def test_crafted_metadata_is_refused_in_one_line(tmp_path, metadata, match):
    data = torch.ones(2).numpy().tobytes() + torch.zeros(2).numpy().tobytes()
    header = {"__metadata__": metadata, "scale.a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "shift.a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    with pytest.raises(SteeringFileError, match=match) as e:
        load_steering(_raw_file(tmp_path / "x.safetensors", header, data))
    assert "\n" not in str(e.value)


def test_crafted_header_is_refused(tmp_path):
    meta = {"lineas": _v1_meta({"a": {"dim": 2}})}
    ok = {"dtype": "F32", "shape": [2]}
    cases = [
        ({"scale.a": {**ok, "data_offsets": [0, 8]}, "shift.a": {**ok, "data_offsets": [0, 8]}}, "overlaps"),
        ({"scale.a": {**ok, "data_offsets": [0, 8]}, "shift.a": {**ok, "data_offsets": [8, 17]}}, "offsets"),
        ({"scale.a": {**ok, "data_offsets": [0, 8]}, "shift.a": {**ok, "data_offsets": [8, 1e300]}}, "offsets"),
        ({"scale.a": {**ok, "data_offsets": [0, 8]}, "shift.a": "x"}, "not an object"),
        ({"scale.a": {**ok, "data_offsets": [0, 8]}, "shift.a": {"dtype": "I64", "shape": [1],
                                                                 "data_offsets": [8, 16]}}, "dtype"),
    ]
    for entries, match in cases:
        p = _raw_file(tmp_path / "x.safetensors", {"__metadata__": meta, **entries}, bytes(16))
        with pytest.raises(SteeringFileError, match=match):
            load_steering(p)
    p = _raw_file(tmp_path / "x.safetensors", {"__metadata__": meta, "scale.a": {**ok, "data_offsets": [0, 8]},
                                              "shift.a": {**ok, "data_offsets": [8, 16]}}, bytes(15))
    with pytest.raises(SteeringFileError, match="truncated"):
        load_steering(p)
    (tmp_path / "y.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")
    with pytest.raises(SteeringFileError, match="truncated"):
        load_steering(tmp_path / "y.safetensors")


# -- NaN / inf maps, inverse overflow, NaN at padding --------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_save_refuses_non_finite_maps_and_writes_nothing(tmp_path, bad):
    s = _steering()
    with torch.no_grad():
        s.bias("a")[1] = bad
    with pytest.raises(SteeringFileError, match="NaN or infinite"):
        save_steering(tmp_path / "x.safetensors", s)
    assert list(tmp_path.iterdir()) == []


def test_inverse_refuses_a_scale_whose_inverse_overflows():
    s = _steering()
    with torch.no_grad():
        s.weight("a")[0] = 1e-40
    with pytest.raises(LineasError, match="not invertible"):
        s.inverse()
    with torch.no_grad():
        s.weight("a")[0] = 0.0
    with pytest.raises(LineasError, match="not invertible"):
        s.inverse()
    with torch.no_grad():
        s.weight("a")[0] = 1e-30  # small but invertible in float32: exact algebra still holds
    inv = s.inverse()
    assert torch.isfinite(inv.weight("a")).all() and inv.weight("a")[0].item() == pytest.approx(1e30, rel=1e-6)


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), "1"])
def test_at_strength_refuses_non_finite(strength):
    with pytest.raises(LineasError, match="finite"):
        _steering().at_strength(strength)


def test_nan_at_a_padding_position_does_not_reach_the_pooled_vector():
    h = torch.randn(2, 5, 3)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    expected = pool(h, -1, mask)
    h[0, 0] = float("nan")
    h[0, 1] = float("inf")
    got = pool(h, -1, mask)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got[0], h[0, 2:].mean(0), rtol=1e-6, atol=1e-6)


# -- checksum; format 1 files still load ---------------------------------------------------------------------
def test_bit_flip_in_tensor_data_is_refused(tmp_path):
    p = save_steering(tmp_path / "x.safetensors", _steering())
    data = bytearray(p.read_bytes())
    n = int.from_bytes(data[:8], "little")
    for pos in (8 + n, len(data) - 1, 8 + n + 13):
        flipped = bytearray(data)
        flipped[pos] ^= 0x01  # a low mantissa bit: the value stays finite and plausible
        q = tmp_path / "f.safetensors"
        q.write_bytes(bytes(flipped))
        with pytest.raises(SteeringFileError, match="checksum"):
            load_steering(q)
    assert json.loads(json.loads(data[8:8 + n])["__metadata__"]["lineas"])["format_version"] == FORMAT_VERSION == 2


def test_format_1_files_without_checksum_still_load(tmp_path):
    p = tmp_path / "v1.safetensors"
    p.write_bytes(st_save({"scale.a": torch.tensor([2.0, 3.0]), "shift.a": torch.tensor([0.5, -1.0])},
                          metadata={"lineas": _v1_meta({"a": {"dim": 2, "channel_axis": -1}})}))
    s, meta = load_steering(p)
    assert meta.format_version == 1 and s.weight("a").tolist() == [2.0, 3.0] and s.bias("a").tolist() == [0.5, -1.0]


def test_committed_result_files_still_load():
    files = sorted((REPO / "docs" / "results").rglob("*.safetensors"))
    assert files, "the committed result steerings are part of the repo"
    versions = []
    for f in files:
        s, meta = load_steering(f)
        assert s.num_parameters() > 0
        versions.append(meta.format_version)
    assert 1 in versions, "format 1 files (no checksum) must keep loading"
    assert set(versions) <= {1, 2}


# -- the structure fingerprint -------------------------------------------------------------------------------
def _llama(layers: int, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_structure_fingerprint_is_compared_with_an_explicit_transfer_override(tmp_path):
    from lineas_engine import model_fingerprint, site_specs

    two, three = _llama(2), _llama(3)
    sites = ["model.layers.0.post_attention_layernorm", "model.layers.1.post_attention_layernorm"]
    s = Steering(site_specs(two, sites))
    p = save_steering(tmp_path / "s.safetensors", s, fingerprint=model_fingerprint(two))
    with pytest.raises(IncompatibleSteeringError, match="another structure") as e:
        load_steering(p, model=three)
    assert "allow_transfer" in str(e.value)
    load_steering(p, model=three, allow_transfer=True)  # deliberate transfer: sites and widths fit
    load_steering(p, model=_llama(2, seed=5))  # same base, other weights (a fine-tune): accepted as is
    other_width = _llama(2)
    other_width.model.layers[1].post_attention_layernorm = torch.nn.LayerNorm(8)
    with pytest.raises(IncompatibleSteeringError, match="width 8"):
        load_steering(p, model=other_width, allow_transfer=True)  # the override never skips the width check


# -- concurrent writers --------------------------------------------------------------------------------------
def test_concurrent_no_clobber_saves_keep_exactly_one_and_never_touch_the_umask(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "x.safetensors"
    results: list = []

    def save(i):
        s = _steering()
        with torch.no_grad():
            s.bias("a").fill_(float(i))
        try:
            save_steering(path, s, overwrite=False)
            results.append(("ok", i))
        except FileExistsError:
            results.append(("exists", i))

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for k, i in results if k == "ok"]
    assert len(results) == 8 and len(winners) == 1
    assert load_steering(path)[0].bias("a")[0].item() == winners[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
    assert os.umask(umask) == umask
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.fixture(params=["hard link", "exclusive create"])
def link_mode(request, monkeypatch):
    """Both ways ``write_numbered`` publishes a file: a hard link, and an exclusive create where the file
    system has no hard links."""
    if request.param == "exclusive create":
        import errno

        def no_links(*_a, **_k):
            raise OSError(errno.EPERM, "hard links not supported")

        monkeypatch.setattr(os, "link", no_links)
    return request.param


def test_numbered_writer_never_replaces_a_number_taken_after_its_scan(tmp_path, monkeypatch, link_mode):
    import lineas_engine.atomic as atomic
    from lineas_engine import write_numbered

    (tmp_path / "style_00001.safetensors").write_bytes(b"first")
    real_scan = atomic._names_in

    def scan_then_race(folder):
        names = real_scan(folder)  # the writer's view: 00001 taken, 00002 free
        (folder / "style_00002.safetensors").write_bytes(b"theirs")  # another writer takes 00002 meanwhile
        return names

    monkeypatch.setattr(atomic, "_names_in", scan_then_race)
    path = write_numbered(tmp_path, "style", lambda stem: f"mine, written as {stem}".encode())
    assert path == tmp_path / "style_00003.safetensors"
    assert path.read_bytes() == b"mine, written as style_00003"  # contents that name their file follow it
    assert (tmp_path / "style_00001.safetensors").read_bytes() == b"first"
    assert (tmp_path / "style_00002.safetensors").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"style_0000{i}.safetensors" for i in (1, 2, 3)]


def test_eight_threads_writing_numbered_files_keep_eight(tmp_path, link_mode):
    from lineas_engine import write_numbered

    barrier = threading.Barrier(8)
    paths: list = []

    def write(i):
        barrier.wait()  # all scan the same empty folder, then race for 00001
        paths.append(write_numbered(tmp_path, "same", f"writer {i}".encode() * 1000, ext=".bin"))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in paths) == [f"same_{i:05d}.bin" for i in range(1, 9)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"same_{i:05d}.bin" for i in range(1, 9)]  # no temp
    assert sorted(p.read_bytes() for p in paths) == sorted(f"writer {i}".encode() * 1000 for i in range(8))


def test_numbered_writer_refuses_a_prefix_that_leaves_the_folder(tmp_path):
    from lineas_engine import write_numbered

    (tmp_path / "in").mkdir()
    for prefix in ("../out", "sub/name"):
        with pytest.raises(LineasError, match="would leave the folder"):
            write_numbered(tmp_path / "in", prefix, b"x")
    assert list((tmp_path / "in").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_atomic_write_refuses_non_regular_targets(tmp_path):
    from lineas_engine import atomic_write_bytes

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    for target in (fifo, tmp_path / "dir", tmp_path / "link"):
        with pytest.raises(SteeringFileError, match="refusing"):
            atomic_write_bytes(target, b"x")
    assert (tmp_path / "link").is_symlink() and fifo.exists() and not fifo.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo", "link"]


def test_engine_refuses_non_finite_strength_and_sparsity():
    from lineas_engine import TrainConfig, attach

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    s = Steering({"0": SiteSpec(4)})
    for bad in (float("nan"), float("inf"), "1"):
        with pytest.raises(LineasError, match="finite"):
            attach(model, s, bad)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(LineasError, match="gamma"):
            TrainConfig(gamma=bad)
