"""Bad input to the node pack's helpers: image folders, steering names and saves, on the node
pack's real helpers (ComfyUI's ``folder_paths`` for the save folder)."""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.comfy


# the pack is its own package (as ComfyUI loads it), with its own copy of lineas_engine and its errors


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height (a decompression bomb's header; no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


def test_16_bit_grayscale_is_scaled_exactly(pack, tmp_path):
    values = np.array([[0, 257, 32768], [65535, 1000, 60000], [1, 2, 65534]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # Pillow's mode for a 16-bit PNG; convert("RGB") clips it to white
        assert np.asarray(im.convert("RGB"))[0, 1, 0] == 255  # Pillow's own reading: 257 / 65535 (near black) -> white
    got = pack.nodes._images.load_folder(tmp_path, resolution=3, resize="none")
    assert got.shape == (1, 3, 3, 3)
    expected = torch.from_numpy(values.astype(np.float32) / 65535.0)
    for c in range(3):
        torch.testing.assert_close(got[0, ..., c], expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "CMYK", "RGB"])
def test_8_bit_modes_match_pillows_rgb_conversion(pack, tmp_path, mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    im = rgb.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    im.save(path, **({"quality": 100} if mode == "CMYK" else {}))
    with Image.open(path) as ref:
        expected = torch.from_numpy(np.asarray(ref.convert("RGB"), dtype=np.float32) / 255.0)
    got = pack.nodes._images.load_folder(tmp_path, resolution=4, resize="none")[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_exif_orientation_is_applied(pack, tmp_path):
    arr = np.zeros((2, 4, 3), dtype=np.uint8)  # 2 rows x 4 columns, every pixel distinct
    arr[..., 0] = np.arange(8).reshape(2, 4) * 30
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif)
    got = pack.nodes._images.read_image(tmp_path / "r.png")
    assert got.shape == (4, 2, 3)
    expected = np.rot90(arr, k=-1).astype(np.float32) / 255.0
    torch.testing.assert_close(got, torch.from_numpy(expected.copy()), rtol=0, atol=0)


@pytest.mark.parametrize("size", [(9000, 9000), (20000, 20000)])
def test_oversized_images_get_our_message_before_decoding(pack, tmp_path, size):
    _png_header_only(tmp_path / "bomb.png", *size)
    with pytest.raises(pack.lineas_engine.LineasError, match="larger than 67,108,864 pixels; .*downscale it") as e:
        pack.nodes._images.load_folder(tmp_path, resolution=64)
    assert "bomb.png" in str(e.value)


def test_unreadable_image_is_named(pack, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(pack.lineas_engine.LineasError, match="cannot read image .*broken.png"):
        pack.nodes._images.load_folder(tmp_path, resolution=8)


def test_folder_size_limit_is_clear_and_configurable(pack, tmp_path, monkeypatch):
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    images = pack.nodes._images
    monkeypatch.setenv("LINEAS_MAX_FOLDER_IMAGES", "3")
    with pytest.raises(pack.lineas_engine.LineasError, match=r"has 4 images, more than the limit of 3 .*GiB at 512 px.*"
                                          "LINEAS_MAX_FOLDER_IMAGES"):
        images.load_folder(tmp_path, resolution=512)
    monkeypatch.setenv("LINEAS_MAX_FOLDER_IMAGES", "4")
    assert images.load_folder(tmp_path, resolution=16).shape == (4, 16, 16, 3)
    monkeypatch.setenv("LINEAS_MAX_FOLDER_IMAGES", "many")
    with pytest.raises(pack.lineas_engine.LineasError, match="must be a positive integer"):
        images.load_folder(tmp_path, resolution=16)
    monkeypatch.delenv("LINEAS_MAX_FOLDER_IMAGES")
    assert images.max_folder_images() == 1000


@pytest.mark.parametrize("name", ["CON", "con.x", "NUL.safetensors", "aux.tar", "COM1", "lpt9.style", "Prn",
                                  "com\u00b9", "name.", "a/../b", "..", "../x", "/abs", "x\\y", ""])
def test_reserved_and_escaping_names_are_refused(pack, name):
    with pytest.raises(pack.lineas_engine.LineasError, match="not allowed|reserved"):
        pack.nodes._files.check_name(name)


@pytest.mark.parametrize("name", ["console", "icon", "com10", "my style", "aux_style", "v1.2"])
def test_ordinary_names_pass(pack, name):
    assert pack.nodes._files.check_name(name) == name


@pytest.fixture
def output_dir(pack, tmp_path):
    import folder_paths

    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        yield tmp_path
    finally:
        folder_paths.set_output_directory(before)


def test_a_failed_node_save_keeps_the_trained_steering(pack, output_dir, tmp_path, monkeypatch):
    """The output folder cannot be made (a file named like it): the node's save does not lose the training,
    it keeps the steering in $LINEAS_CACHE/unsaved/ and its one-line error says where."""
    from lineas_engine import SiteSpec, Steering, SteeringRecord, load_record

    monkeypatch.setenv("LINEAS_CACHE", str(tmp_path / "cache"))
    (output_dir / "lineas").write_bytes(b"not a folder")
    s = Steering({"a": SiteSpec(4)})
    with torch.no_grad():
        s.bias("a").fill_(0.5)
    with pytest.raises(pack.lineas_engine.LineasError, match="kept at") as e:
        pack.nodes._files.save_ref(SteeringRecord(s, fingerprint={"architecture": "Toy"}), "kept")
    msg = str(e.value)
    assert "\n" not in msg and "already exists (not replaced)" in msg
    kept = Path(msg.split("kept at ")[1].split(": move")[0])
    assert kept.parent == tmp_path / "cache" / "unsaved" and kept.name.startswith("kept-")
    rec = load_record(kept)
    assert rec.name == "kept" and rec.steering.bias("a").tolist() == [0.5] * 4
    assert (output_dir / "lineas").read_bytes() == b"not a folder"


def test_eight_simultaneous_saves_of_one_name_keep_eight_files(pack, output_dir):
    from lineas_engine import SiteSpec, Steering, SteeringRecord, load_steering

    paths, errors = [], []

    def save(i):
        s = Steering({"a": SiteSpec(4)})
        with torch.no_grad():
            s.bias("a").fill_(float(i))
        try:
            paths.append(pack.nodes._files.save_ref(SteeringRecord(s, fingerprint={"architecture": "Toy"}), "same"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(paths)) == 8
    files = sorted((output_dir / "lineas").iterdir())
    assert [f.name for f in files] == [f"same_{i:05d}.safetensors" for i in range(1, 9)]
    assert sorted(load_steering(f)[0].bias("a")[0].item() for f in files) == list(map(float, range(8)))
