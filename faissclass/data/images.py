"""Images to RGB: PIL images and arrays of any numeric dtype, scaled to 8 bits."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_rgb", "to_uint8"]


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Pixel values of any numeric dtype scaled to 0..255 uint8.

    uint8 as is; bool x 255; 16-bit (uint16, or int16/int32 within 0..65535, as
    16-bit PNGs decode) / 257; floats within [0, 1] x 255, within [0, 255] as is;
    anything else min-max scaled. NaN and inf are refused (an undecodable image).
    """
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype.kind not in "iuf":
        raise ValueError(f"pixel values of dtype {a.dtype} are not an image")
    if a.size == 0:
        raise ValueError(f"empty image (shape {a.shape})")
    x = a.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("the image holds NaN or inf pixel values")
    lo, hi = float(x.min()), float(x.max())
    if a.dtype.kind == "f":
        if lo >= 0 and hi <= 1:
            x = x * 255.0
        elif not (lo >= 0 and hi <= 255):
            x = (x - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x)
    elif lo >= 0 and hi <= 255 and a.dtype.itemsize == 1:
        pass
    elif lo >= 0 and hi <= 65535 and (a.dtype.itemsize >= 2):
        x = x / 257.0  # 16-bit range, whatever the container
    else:
        x = (x - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def to_rgb(img: Any) -> Any:
    """An RGB PIL image from a PIL image or an array (H, W), (H, W, 1|3|4) of any
    numeric dtype. 16-bit, 32-bit integer and float images are scaled to 8 bits
    (PIL's own convert("RGB") clips them: all white or all black); palette and
    alpha images are composited on white; empty images are refused."""
    from PIL import Image

    if isinstance(img, Image.Image):
        if img.width == 0 or img.height == 0:
            raise ValueError(f"empty image ({img.width}x{img.height})")
        if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
            img = np.asarray(img)
        else:
            if img.mode in ("P", "PA", "LA", "RGBA"):  # palette/alpha: via RGBA onto white
                img = img.convert("RGBA")
                bg = Image.new("RGB", img.size, (255, 255, 255))
                bg.paste(img, mask=img.getchannel("A"))
                return bg
            return img.convert("RGB")
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be (H, W) or (H, W, 1|3|4); got shape {a.shape}")
    if 0 in a.shape[:2]:
        raise ValueError(f"empty image (shape {a.shape})")
    a = to_uint8(a)
    if a.ndim == 3 and a.shape[2] == 4:
        return to_rgb(Image.fromarray(a, "RGBA"))
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")
