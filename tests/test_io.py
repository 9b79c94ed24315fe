"""lvae.io: atomic outputs (permissions, interruption, unwritable folders), colour types of the
modes read, output formats (lossless exactly, lossy only with a quality)."""
import os
import stat
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lvae import io as lio
from lvae.io import atomic_write_bytes


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_atomic_write_respects_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "out.bin", b"data")
        (tmp_path / "plain.bin").write_bytes(b"data")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "out.bin").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode) == 0o644
    assert (tmp_path / "out.bin").read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "plain.bin"]


# -- issue 15: colour types, output formats, partial outputs --------------------------------------------


def _modes():
    rgb = Image.fromarray((np.random.default_rng(1).random((9, 7, 3)) * 255).astype(np.uint8))
    gray = rgb.convert("L")
    yield "L", gray, "x.png"
    yield "1", gray.convert("1"), "x.png"
    yield "LA", gray.convert("LA"), "x.png"
    yield "I;16", Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257), "x.png"
    yield "F", Image.fromarray(np.asarray(gray, dtype=np.float32) / 255), "x.tif"
    yield "RGB", rgb, "x.png"
    yield "P", rgb.convert("P"), "x.png"
    yield "RGBA", rgb.convert("RGBA"), "x.png"
    yield "CMYK", rgb.convert("CMYK"), "x.tif"


def test_colour_type_of_each_mode(tmp_path):
    """Gray modes (1, L, LA, I;16, F) read as 1×1×H×W "gray"; the others as RGB; load_image is always RGB."""
    for mode, img, name in _modes():
        path = tmp_path / f"{mode.replace(';', '_')}-{name}"
        img.save(path)
        loaded = lio.read_image(path)
        expect = "gray" if mode in ("L", "1", "LA", "I;16", "F") else "rgb"
        assert loaded.colour == expect, mode
        assert loaded.tensor.shape == (1, 1 if expect == "gray" else 3, 9, 7), mode
        assert not loaded.alpha_dropped, mode  # opaque
        rgb = lio.load_image(path)
        assert rgb.shape == (1, 3, 9, 7) and torch.equal(rgb, loaded.rgb())
    gray = np.asarray(Image.open(tmp_path / "L-x.png"))
    for mode in ("I_16", "F"):  # 16-bit and float gray reduce to the same 8-bit values
        t = lio.read_image(next(tmp_path.glob(f"{mode}-*"))).tensor
        assert np.array_equal((t[0, 0] * 255).round().numpy().astype(np.uint8), gray)


def test_dropped_transparency_is_reported(tmp_path):
    img = Image.new("RGBA", (4, 3), (10, 20, 30, 255))
    img.save(tmp_path / "opaque.png")
    img.putpixel((0, 0), (10, 20, 30, 0))
    img.save(tmp_path / "hole.png")
    pal = Image.new("P", (4, 3), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.save(tmp_path / "trns.png", transparency=0)
    Image.new("LA", (4, 3), (50, 128)).save(tmp_path / "la.png")
    assert not lio.read_image(tmp_path / "opaque.png").alpha_dropped
    assert lio.read_image(tmp_path / "hole.png").alpha_dropped
    assert lio.read_image(tmp_path / "trns.png").alpha_dropped
    la = lio.read_image(tmp_path / "la.png")
    assert la.alpha_dropped and la.colour == "gray"


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".ppm", ".pgm", ".webp", ".pnm"])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossless_formats_store_the_8bit_image_exactly(tmp_path, suffix, channels):
    img = torch.rand(1, channels, 13, 11)
    expected = np.asarray(lio.tensor_to_image(img))
    if suffix == ".pgm" and channels == 3:
        with pytest.raises(ValueError, match="PGM holds grayscale images only"):
            lio.save_image(img, tmp_path / f"x{suffix}")
        return
    saved = lio.save_image(img, tmp_path / f"x{suffix}")
    assert saved.format.lossless and saved.colour == ("gray" if channels == 1 else "rgb")
    back = Image.open(tmp_path / f"x{suffix}")
    back = back.convert("L" if channels == 1 else "RGB")  # WebP stores gray as RGB
    assert np.array_equal(np.asarray(back), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"x{suffix}"]


def test_lossy_formats_need_a_quality(tmp_path):
    img = torch.rand(1, 3, 8, 8)
    for name in ("x.jpg", "x.jpeg", "x.avif"):
        with pytest.raises(ValueError, match=r"is lossy and would degrade the decoded image a second time.*quality="):
            lio.save_image(img, tmp_path / name)
    with pytest.raises(ValueError, match="PNG is lossless"):
        lio.save_image(img, tmp_path / "x.png", quality=90)
    with pytest.raises(ValueError, match="does not write .gif"):
        lio.save_image(img, tmp_path / "x.gif")
    with pytest.raises(ValueError, match="says PNG but format=jpeg says JPEG"):
        lio.save_image(img, tmp_path / "x.png", format="jpeg", quality=90)
    assert list(tmp_path.iterdir()) == []
    saved = lio.save_image(img, tmp_path / "x.jpg", quality=85)
    assert saved.describe() == "RGB JPEG (quality 85)" and Image.open(tmp_path / "x.jpg").format == "JPEG"
    assert lio.save_image(img, tmp_path / "y.webp", quality=70).describe() == "RGB WebP (quality 70)"
    assert lio.save_image(img[:, :1], tmp_path / "z.webp").describe() == "gray WebP (lossless)"
    assert lio.save_image(img, tmp_path / "noext").format.name == "png"  # no suffix: PNG, as before
    for name in ("x.jpg", "noext"):
        assert lio.written_by_lvae(tmp_path / name)
    assert not lio.written_by_lvae(tmp_path / "y.webp")  # WebP carries no mark


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(lio.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lio.atomic_write_bytes(out, b"new" * 1000)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    # A process that must end at once (os._exit) first removes the temporary files under way.
    with lio.atomic_output(tmp_path / "next.bin") as tmp:
        tmp.write_bytes(b"half")
        lio.remove_partial_outputs()
        assert not tmp.exists()
        tmp.write_bytes(b"whole")  # (the block itself goes on here; the command would have exited)
    assert lio._PENDING == set()


def test_unwritable_folders_are_named_with_the_real_output(tmp_path):
    with pytest.raises(FileNotFoundError, match="the output folder .* does not exist"):
        lio.check_writable(tmp_path / "none" / "x.lvae")
    lio.check_writable(tmp_path / "x.lvae")
    assert list(tmp_path.iterdir()) == []
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes anywhere: the command-line test covers this with setpriv")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for call in (lambda: lio.check_writable(ro / "x.lvae"), lambda: lio.atomic_write_bytes(ro / "x.lvae", b"x")):
            with pytest.raises(PermissionError, match=f"cannot write {ro / 'x.lvae'}: the folder {ro} is not writable"):
                call()
    finally:
        ro.chmod(0o755)
