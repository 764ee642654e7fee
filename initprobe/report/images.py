"""Image grids as PNG files (written atomically)."""

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..runio import atomic_write_bytes


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats -> NHWC uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1,
         scale: int = 1) -> Image.Image:
    """Tile a batch into one image; `scale` enlarges small images with nearest neighbours."""
    x = to_uint8(images)
    n, h, w, c = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    canvas = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h,
               pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save a PNG grid; images smaller than 32 pixels are enlarged so digits stay legible."""
    scale = max(1, 64 // images.shape[-1])
    buf = io.BytesIO()
    grid(images, nrow, scale=scale).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
