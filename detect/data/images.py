"""Reading images of any common form into 8-bit RGB, with errors that name the file; writing JPEGs."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["SampleError", "ImageError", "read_image", "to_uint8", "write_jpeg", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

Image.MAX_IMAGE_PIXELS = 400_000_000  # allow large scans, still refuse decompression bombs


class SampleError(ValueError):
    """An item of a dataset (an image, with its annotation) that cannot be used; ``str()`` names the file.
    Datasets skip and count exactly these; every other error (a bad setting, a bug) stops the run."""


class ImageError(SampleError):
    """An image that cannot be used; ``str()`` names the file and the problem."""

    def __init__(self, path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Pixel values of any numeric dtype as uint8: bool -> 0/255; integers above 255 read as 16-bit;
    floats as 0..1 when their maximum is <= 1, else 0..max (NaN and infinities made finite first)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return (arr.astype(np.float32) * (255.0 / top)).round().clip(0, 255).astype(np.uint8)
    arr = np.nan_to_num(arr.astype(np.float32))
    top = 1.0 if arr.max(initial=0) <= 1.0 else float(arr.max())
    return (arr * (255.0 / top)).round().clip(0, 255).astype(np.uint8)


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file as ``ndarray[H, W, 3] uint8`` RGB, EXIF orientation applied.
    size: ``(width, height)`` its annotation gives (0 or None: unknown). The image is returned in the frame
    the boxes were drawn in: EXIF-oriented when that matches ``size``; the stored pixels, unrotated, when
    only they match (a photo whose EXIF turns it by 90 degrees, annotated by a tool that ignores EXIF, as
    labelImg and MATLAB's imread do); an :class:`ImageError` naming both sizes when neither does (an image
    resized or replaced after it was annotated: its boxes would not fit it).
    Grey, grey+alpha, RGBA (composited on white), palette, CMYK, 16-bit and float images are all
    converted. Raises :class:`ImageError` for a missing, unreadable, truncated or empty image, one above
    ``Image.MAX_IMAGE_PIXELS``, or one the memory cannot hold."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "file not found")
    mismatch = None
    try:
        with Image.open(path) as im:
            im.load()
            stored = im
            with contextlib.suppress(Exception):  # broken EXIF must not lose the image
                im = ImageOps.exif_transpose(im)  # a new image (the stored one stays) when EXIF turns it
            if size and all(size) and tuple(size) != im.size:
                if tuple(size) != stored.size:
                    mismatch = f"{im.size[0]}x{im.size[1]}"
                im = stored  # annotated on the stored pixels: EXIF orientation not applied
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA")).convert("RGB")
            elif im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                im = Image.fromarray(to_uint8(np.asarray(im)), mode="L").convert("RGB")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ImageError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(path, f"corrupt or truncated image ({e})") from None
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"image too large ({e})") from None
    except MemoryError:
        raise ImageError(path, "image too large to decode in the memory available") from None
    if mismatch:
        raise ImageError(path, f"the image is {mismatch} pixels but its annotation says {size[0]}x{size[1]}: its "
                               f"boxes do not fit it (resized or replaced after it was annotated?)")
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(path, f"empty image of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def write_jpeg(path: str | Path, image: np.ndarray, quality: int) -> None:
    """Write ``image`` (uint8[H, W, 3] RGB) to ``path`` as a JPEG of ``quality`` (1..100), creating its
    folder; ``RuntimeError`` naming the file when encoding fails."""
    import cv2  # only where images are written (readers do not need OpenCV)

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"{path}: JPEG encoding failed")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data.tobytes())
