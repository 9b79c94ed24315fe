"""Reading images (lvae.io.load_image): every mode and format is checked pixel by pixel, and the
EXIF orientation of photos is applied."""
import numpy as np
import pytest
import torch
from PIL import Image

from lvae.io import load_image

RNG = np.random.default_rng(1)
RGB = (RNG.random((9, 7, 3)) * 255).astype(np.uint8)  # 9 rows, 7 columns: no symmetry


def pixels(t: torch.Tensor) -> np.ndarray:
    """A loaded 1×3×H×W tensor as H×W×3 uint8 (it must hold exact multiples of 1/255)."""
    assert t.dim() == 4 and t.shape[:2] == (1, 3) and t.dtype == torch.float32
    scaled = t[0].permute(1, 2, 0).numpy() * 255
    out = np.round(scaled)
    assert np.abs(scaled - out).max() < 1e-4  # 8-bit values, nothing in between
    return out.astype(np.uint8)


def gray3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def load_saved(tmp_path, img: Image.Image, name: str = "x.png", **save_args) -> np.ndarray:
    path = tmp_path / name
    img.save(path, **save_args)
    return pixels(load_image(path))


def test_rgb_is_read_as_it_is(tmp_path):
    assert np.array_equal(load_saved(tmp_path, Image.fromarray(RGB)), RGB)


def test_gray_is_repeated_over_the_three_channels(tmp_path):
    gray = (RNG.random((9, 7)) * 255).astype(np.uint8)
    assert np.array_equal(load_saved(tmp_path, Image.fromarray(gray, "L")), gray3(gray))


def test_palette_images_take_their_palette_colours(tmp_path):
    img = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    index = np.asarray(img)
    palette = np.asarray(img.getpalette(), dtype=np.uint8).reshape(-1, 3)
    assert np.array_equal(load_saved(tmp_path, img), palette[index])


def test_alpha_is_dropped_and_colours_kept(tmp_path):
    alpha = (RNG.random((9, 7)) * 255).astype(np.uint8)
    rgba = np.concatenate([RGB, alpha[..., None]], axis=2)
    assert np.array_equal(load_saved(tmp_path, Image.fromarray(rgba, "RGBA")), RGB)
    gray = RGB[..., 0]
    la = Image.fromarray(np.stack([gray, alpha], axis=2), "LA")
    assert np.array_equal(load_saved(tmp_path, la), gray3(gray))


def test_sixteen_bit_gray_is_rounded_to_eight_bits(tmp_path):
    values = np.array([[0, 128, 129, 257, 385, 386, 257 * 100, 65534, 65535]], dtype=np.uint16)
    expected = np.array([[0, 0, 1, 1, 1, 2, 100, 255, 255]], dtype=np.uint8)  # round(v / 257)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    assert np.array_equal(load_saved(tmp_path, img), gray3(expected))


def test_thirty_two_bit_and_float_gray(tmp_path):
    ints = Image.fromarray(np.array([[0, 257, 65535, 70000]], dtype=np.int32), "I")
    assert np.array_equal(load_saved(tmp_path, ints, "i.tif"), gray3(np.array([[0, 1, 255, 255]], np.uint8)))
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")  # [0, 1] floats are scaled
    assert np.array_equal(load_saved(tmp_path, unit, "f.tif"), gray3(np.array([[0, 128, 255]], np.uint8)))
    big = Image.fromarray(np.array([[0.0, 3.4, 300.0]], dtype=np.float32), "F")  # others taken as 0–255
    assert np.array_equal(load_saved(tmp_path, big, "g.tif"), gray3(np.array([[0, 3, 255]], np.uint8)))


def test_cmyk_and_bilevel(tmp_path):
    cmyk = Image.fromarray(RGB).convert("CMYK")  # C = 255 − R, ..., K = 0: converts back exactly
    assert np.array_equal(load_saved(tmp_path, cmyk, "c.tif"), RGB)
    bilevel = Image.fromarray(RGB).convert("L").convert("1")
    expected = gray3(np.asarray(bilevel).astype(np.uint8) * 255)
    assert set(np.unique(expected)) == {0, 255}
    assert np.array_equal(load_saved(tmp_path, bilevel), expected)


@pytest.mark.parametrize("fmt, args", [("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_lossless_formats_give_the_pixels_back(tmp_path, fmt, args):
    assert np.array_equal(load_saved(tmp_path, Image.fromarray(RGB), f"x.{fmt.lower()}", format=fmt, **args), RGB)


def test_jpeg_gives_the_decoded_pixels(tmp_path):
    smooth = np.clip(np.add.outer(np.arange(32) * 6, np.arange(48) * 4)[..., None] + np.array([0, 30, 60]), 0, 255)
    smooth = smooth.astype(np.uint8)
    got = load_saved(tmp_path, Image.fromarray(smooth), "x.jpg", quality=95)
    with Image.open(tmp_path / "x.jpg") as im:
        assert np.array_equal(got, np.asarray(im.convert("RGB")))
    assert np.abs(got.astype(int) - smooth).mean() < 3  # and that is the image that was saved


# EXIF orientation → the transform that shows the photo upright (numpy, rows × columns × channels).
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180°
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, -1),  # rotated 90° clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # transversed
    8: lambda a: np.rot90(a, 1),  # rotated 90° counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    got = load_saved(tmp_path, Image.fromarray(RGB), "photo.png", exif=exif.tobytes())
    expected = ORIENTATIONS[orientation](RGB)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_exif_orientation_of_a_jpeg(tmp_path):
    """A camera JPEG stored sideways (orientation 6): its decoded pixels, turned upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    got = load_saved(tmp_path, Image.fromarray(RGB), "photo.jpg", exif=exif.tobytes(), quality=98)
    with Image.open(tmp_path / "photo.jpg") as im:
        stored = np.asarray(im.convert("RGB"))  # as stored: 9 rows, 7 columns
    assert stored.shape == (9, 7, 3) and got.shape == (7, 9, 3)
    assert np.array_equal(got, np.rot90(stored, -1))
