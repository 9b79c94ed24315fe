"""Classical image codecs through Pillow (JPEG 4:2:0, WebP, AVIF), for rate–distortion baselines.

Every codec maps an RGB image and a quality setting to the bytes of a complete image file, and
those bytes back to an RGB image. Pillow is imported by the functions, not with the module: the
codec names (:data:`CODECS`) serve ``lvae --help``.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["CODECS", "DEFAULT_QUALITIES", "has_avif", "available_codecs", "codec_info", "encode", "decode"]

# Pillow save() arguments besides the quality; WebP and AVIF code 4:2:0 like the JPEG setting.
_SETTINGS: dict[str, dict[str, Any]] = {
    "jpeg": {"format": "JPEG", "subsampling": 2},  # 2 = 4:2:0
    "webp": {"format": "WEBP", "method": 6},  # slowest, smallest files
    "avif": {"format": "AVIF", "subsampling": "4:2:0", "speed": 6},
}
CODECS: tuple[str, ...] = tuple(_SETTINGS)
FILE_SUFFIX = {"jpeg": ".jpg", "webp": ".webp", "avif": ".avif"}
_FEATURE = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}

# Pillow's JPEG quality scale is meaningful up to 95; WebP and AVIF go to 100.
DEFAULT_QUALITIES: dict[str, list[int]] = {
    "jpeg": list(range(5, 96, 5)),
    "webp": list(range(5, 101, 5)),
    "avif": list(range(5, 101, 5)),
}
_QUALITY_RANGE = {"jpeg": (1, 95), "webp": (0, 100), "avif": (0, 100)}


def has_avif() -> bool:
    """Whether the installed Pillow can write and read AVIF."""
    from PIL import features

    return bool(features.check("avif"))


def available_codecs() -> list[str]:
    """The codecs of :data:`CODECS` that the installed Pillow supports."""
    from PIL import features

    return [c for c in CODECS if features.check(_FEATURE[c])]


def _check_codec(codec: str) -> None:
    from PIL import features

    if codec not in _SETTINGS:
        raise ValueError(f"unknown codec {codec!r}; known codecs: {', '.join(CODECS)}")
    if not features.check(_FEATURE[codec]):
        import PIL

        raise RuntimeError(
            f"the installed Pillow {PIL.__version__} was built without {codec.upper()} support; "
            f"available here: {', '.join(available_codecs()) or 'none'}"
        )


def codec_info(codec: str) -> dict[str, Any]:
    """The codec's settings and its library version, for result files."""
    from PIL import features

    _check_codec(codec)
    settings = {k: v for k, v in _SETTINGS[codec].items() if k != "format"}
    return {"codec": codec, "library_version": features.version(_FEATURE[codec]), "settings": settings}


def encode(image: Image.Image, codec: str, quality: int) -> bytes:
    """Code ``image`` (converted to RGB) with ``codec`` at ``quality``; returns the file's bytes."""
    _check_codec(codec)
    lo, hi = _QUALITY_RANGE[codec]
    if isinstance(quality, bool) or not isinstance(quality, int) or not lo <= quality <= hi:
        raise ValueError(f"{codec} quality must be an integer in [{lo}, {hi}], got {quality!r}")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, quality=quality, **_SETTINGS[codec])
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    """Decode the bytes of an image file to an RGB image."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")
