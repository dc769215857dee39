"""Data: MVTec-AD-layout folders over one or many categories.

A **category** is any folder that holds ``train/good``; categories are found at any depth under the data
root, so ``--data ../shared/datasets`` (``mvtec_ad/bottle``, ``kolektorsdd/commutator``, ...) just works.
Symbolic links are followed (with loop protection), so a multi-class set can be assembled from several
downloads with links such as ``my_data/bottle -> /downloads/mvtec/bottle``.
Inside a category::

    train/good/*.png                      normal training images
    test/good/*.png                       normal test images
    test/<defect>/*.png                   defective test images
    ground_truth/<defect>/<stem>_mask.png pixel masks of the defects (``<stem>.png`` is accepted too)

Every sample is a dict ``{"image": (3, S, S) float in [0, 1], "mask": (1, S, S) float {0, 1},
"label": 0 | 1, "category": str, "path": str, "index": int}``. Images of any mode (grayscale, RGBA,
palette, 16-bit) become 8-bit RGB; non-square images are resized to the model size ``S x S``; masks are
binarised at half of their range (``>= 128`` for 8-bit, ``>= 32768`` for 16-bit, mode ``"1"`` as is, a 0/1
label map as is), so JPEG compression noise is not counted as defect, then resized with nearest-neighbour
(see :func:`load_mask`). The category travels with each sample only so that metrics and plots can be
reported per class: **no unified model may read it**.

Layout problems are found when the dataset is built (image headers are read, not decoded) and raise a
:class:`DataError` that names the folder or file, what is wrong, and how to fix it.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
#: the formats decoded anywhere (datasets, masks, ``predict``, the demo), as Pillow names what a file *contains*;
#: anything else (PostScript, PDF, ICO, ...) is refused before Pillow loads a pixel, whatever its file name says
DECODE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP", "GIF")
MAX_IMAGE_PIXELS = (
    64_000_000  # refuse larger images (decompression-bomb guard); MVTec's largest is 1 MP
)


class DataError(ValueError):
    """A dataset folder or file is not usable; the message says which, what is wrong and how to fix it."""


@dataclass(frozen=True)
class Record:
    """One image on disk, before decoding."""

    path: Path
    category: str
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" or the defect folder name
    mask_path: Path | None


# --------------------------------------------------------------------------------------------------------
# image decoding
# --------------------------------------------------------------------------------------------------------
class ImageRejected(DataError):
    """An image file that cannot be used. ``reason`` says why, in one word of :data:`IMAGE_REJECTIONS`;
    ``name`` is the file as its user knows it; ``facts`` hold the numbers (width, height, limits, ...). The
    message is written for a dataset file; the demo turns the same reason into text for an upload
    (``demo.logic.upload_message``)."""

    def __init__(self, reason: str, name: str, message: str, **facts):
        super().__init__(message)
        self.reason, self.name, self.facts = reason, name, facts


#: every reason an image file is refused, with the message given for a file of a dataset or of the CLI
IMAGE_REJECTIONS = {
    "unreadable": "cannot read {name}: {error}",
    "empty": "{name} is an empty (0-byte) file, not an image: delete or replace it",
    "bomb": "{name} is too large to open safely ({error}): downscale it first (the model works at a few hundred "
    "pixels anyway)",
    "text": "{name} is not a readable image (it holds text): re-save it as PNG/JPEG, or remove it (from the "
    "dataset folder, or from the files given)",
    "not_image": "{name} is not a readable image: re-save it as PNG/JPEG, or remove it (from the dataset folder, "
    "or from the files given)",
    "format": "{name} holds {format} content (whatever its name says), which is not decoded here: convert it to "
    "PNG or JPEG (decoded: PNG, JPEG, BMP, TIFF, WebP, GIF)",
    "too_many_pixels": "{name} has {width}x{height} = {megapixels:.0f} MP, more than the {limit_mp:.0f} MP limit: "
    "downscale it first (the model works at a few hundred pixels anyway)",
    "too_small": "{name} is only {width}x{height} pixels: too small to be an inspection image",
    "budget": "{name}: with it the images of this request would add up to {megapixels:.0f} megapixels, more "
    "than the budget of {limit_mp:.0f}",
    "memory": "{name} is too large to decode on this machine: downscale it first",
    "corrupt": "{name} is corrupt or truncated ({error}): re-export or remove it",
    "not_rgb": "{name}: its {mode} pixels could not be converted to RGB",
}


def _rejected(reason: str, name, **facts) -> ImageRejected:
    return ImageRejected(
        reason, str(name), IMAGE_REJECTIONS[reason].format(name=name, **facts), **facts
    )


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class PixelBudget:
    """The pixels one request may still decode: ``total`` (width x height as the files' headers say, summed
    over the request's files). :func:`decode_image` takes each file's share before decoding it, so a request of
    many large files is bounded as a whole, not only file by file."""

    def __init__(self, total: int):
        self.total, self.used = int(total), 0

    def take(self, pixels: int, name: str) -> None:
        if self.used + pixels > self.total:
            raise _rejected(
                "budget", name, megapixels=(self.used + pixels) / 1e6, limit_mp=self.total / 1e6
            )
        self.used += pixels


def open_image(
    path,
    name: str | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    formats: Sequence[str] = DECODE_FORMATS,
) -> Image.Image:
    """Open an image's header -- no pixel data is decoded yet -- refusing (:class:`ImageRejected`) a missing or
    empty file, text or other non-images, content in a format not in ``formats`` (:data:`DECODE_FORMATS`; the
    file's name does not count), more than ``max_pixels`` pixels (and Pillow's own decompression-bomb guard) and
    images under 2 x 2."""
    path = Path(path)
    name = name or str(path)
    try:
        if path.stat().st_size == 0:
            raise _rejected("empty", name)
        with (
            warnings.catch_warnings()
        ):  # opening reads the header only; our own size limit follows below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as err:
        raise _rejected("bomb", name, error=err, limit_mp=max_pixels / 1e6) from err
    except UnidentifiedImageError as err:
        try:
            with open(path, "rb") as f:
                head = f.read(512)
        except OSError:
            head = b""
        raise _rejected("text" if _looks_like_text(head) else "not_image", name) from err
    except (OSError, ValueError, SyntaxError) as err:
        raise _rejected("unreadable", name, error=getattr(err, "strerror", None) or err) from err
    if formats is not None and img.format not in formats:
        img.close()
        raise _rejected("format", name, format=img.format or "unknown-format")
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise _rejected(
            "too_many_pixels",
            name,
            width=w,
            height=h,
            megapixels=w * h / 1e6,
            limit_mp=max_pixels / 1e6,
        )
    if w < 2 or h < 2:
        img.close()
        raise _rejected("too_small", name, width=w, height=h)
    return img


def decode_image(
    path,
    name: str | None = None,
    size: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    formats: Sequence[str] = DECODE_FORMATS,
    exif_orientation: bool = False,
    budget: PixelBudget | None = None,
) -> tuple[np.ndarray, str]:
    """The one image decoder (datasets, the CLI, the demo): ``(pixels, mode)`` -- (H, W, 3) uint8 RGB, or
    (size, size, 3) with ``size``, and the file's original Pillow mode (what was converted).

    Checks in order, each before any pixel is decoded (so a bomb is never decoded): :func:`open_image`'s, then
    the request's ``budget``; then the pixels are decoded (truncated or corrupt data fails here), turned upright
    if ``exif_orientation`` (phone photos; off for datasets, whose masks are drawn on the stored pixels),
    converted to RGB in bands (:func:`to_rgb_image`) and, with ``size``, reduced at once (the bilinear resize
    everything uses) -- one full-size image is held at a time. Thread-safe: no global warning filter changes."""
    name = name or str(path)
    img = open_image(path, name, max_pixels, formats)
    with img:
        if budget is not None:
            budget.take(img.size[0] * img.size[1], name)
        mode = img.mode
        try:
            img.load()
            if exif_orientation:
                try:  # in place: without an orientation tag exif_transpose would return a full-size copy
                    ImageOps.exif_transpose(img, in_place=True)
                except Exception:  # odd EXIF: keep the stored orientation
                    pass
            rgb = to_rgb_image(img)  # converted in bands: no second full-size copy
            arr = resize_image(rgb, size) if size is not None else np.asarray(rgb)
            if rgb is not img:
                rgb.close()  # the full-size decoded pixels go now; only the (reduced) array stays
            del rgb
        except MemoryError as err:
            raise _rejected("memory", name) from err
        except Exception as err:  # truncated or corrupt data after a valid header
            raise _rejected("corrupt", name, error=err) from err
    release_freed_memory()
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise _rejected("not_rgb", name, mode=mode)
    return arr, mode


def release_freed_memory() -> None:
    """Give memory freed by a large decode back to the system now (glibc ``malloc_trim``). Pillow allocates a big
    image in 16 MB blocks, which glibc serves from per-thread heaps and keeps after they are freed, so without
    this every server thread that once decoded a 40-megapixel upload would hold its peak. No-op elsewhere."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None  # ctypes handle of glibc, once looked up (False: not glibc)


def to_rgb_image(img: Image.Image) -> Image.Image:
    """Any PIL image -> an RGB PIL image (``img`` itself if it is RGB already). 16-bit and integer images are
    rescaled by the real range of their values (:func:`real_range`: a 16-bit file of a 12-bit camera by 4095,
    not 65535, and said once per process), float images by 1 or 255, alpha is composited on black, palette and
    grayscale are expanded. Converted in bands of rows, so a 40-megapixel upload never gets a float (or a second uint8) copy."""
    w, h = img.size
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        try:
            peak = float(img.getextrema()[1])
        except (TypeError, ValueError, IndexError):  # a mode Pillow gives no extrema for
            peak = float(np.asarray(img).max(initial=0))
        scale = 1.0 if img.mode == "F" and peak <= 1.0 else float(real_range(peak))
        if img.mode.startswith("I;16") and scale < 65535:
            _warn_bit_depth(getattr(img, "filename", "") or "an image", peak, scale)
        out = Image.new("RGB", (w, h))
        for r in range(0, h, _ROWS):
            band = np.asarray(img.crop((0, r, w, min(h, r + _ROWS)))).astype(
                np.float64
            )  # (rows, W)
            band = np.clip(band / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
            out.paste(Image.fromarray(np.repeat(band[..., None], 3, axis=2)), (0, r))
        return out
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        src = img if img.mode == "RGBA" else img.convert("RGBA")
        out = Image.new("RGB", (w, h))
        for r in range(0, h, _ROWS):
            band = np.asarray(src.crop((0, r, w, min(h, r + _ROWS)))).astype(
                np.float32
            )  # (rows, W, 4)
            rgb = np.clip(band[..., :3] * (band[..., 3:4] / 255.0) + 0.5, 0, 255).astype(np.uint8)
            out.paste(Image.fromarray(rgb), (0, r))
        return out
    return img if img.mode == "RGB" else img.convert("RGB")


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL image -> (H, W, 3) uint8 (see :func:`to_rgb_image` for the conversions)."""
    return np.asarray(to_rgb_image(img))


_ROWS = 256  # rows converted at a time by to_rgb_image
_BIT_DEPTH_WARNED = False  # the bit-depth warning is given once per process (tests reset it)


def _warn_bit_depth(name: str, peak: float, scale: float) -> None:
    global _BIT_DEPTH_WARNED
    if _BIT_DEPTH_WARNED:
        return
    _BIT_DEPTH_WARNED = True
    bits = int(np.log2(scale + 1))
    warnings.warn(
        f"{name} is stored with 16 bits per pixel but its values reach only {peak:.0f} (a {bits}-bit "
        f"image): scaled by {scale:.0f}, its real range, not 65535, so it is not decoded nearly black. "
        f"Each image is scaled by its own range: if some images of a set are much darker than others, "
        f"convert them all to 8 bits yourself. (Said once, for the first such image.)",
        stacklevel=4,
    )


def load_image(path, size: int | None = None, exif_orientation: bool = False) -> np.ndarray:
    """Decode an image file to (size, size, 3) uint8 RGB (or its own size if ``size`` is None): :func:`decode_image`.

    ``exif_orientation``: turn the pixels upright as the EXIF orientation tag says (phone photos), as the demo
    does with uploads. Off for datasets: their masks are drawn on the stored pixels."""
    return decode_image(path, size=size, exif_orientation=exif_orientation)[0]


def resize_image(img: Image.Image, size: int) -> np.ndarray:
    """An RGB PIL image -> (size, size, 3) uint8: the same pixels :func:`resize_rgb` gives for its array."""
    return np.asarray(img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR))


def resize_rgb(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 -> (size, size, 3) uint8, bilinear (Pillow): the one resize every loader,
    ``inference.predict`` and the demo's upload decoding use, so all of them score the same pixels."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    if arr.shape[:2] == (size, size):
        return np.ascontiguousarray(arr)
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(arr)).resize((size, size), Image.BILINEAR)
    )


def model_inputs(images: Sequence, size: int) -> list[np.ndarray]:
    """File paths or (H, W, 3) / (H, W) uint8 arrays -> (size, size, 3) uint8 arrays, the pixels every scoring
    path sees (``inference.predict``, a served export): a file is turned upright by its EXIF orientation first, as
    the demo does with an upload, then resized by :func:`resize_rgb`."""
    return [
        load_image(im, size, exif_orientation=True)
        if isinstance(im, (str, os.PathLike))
        else resize_rgb(np.asarray(im, dtype=np.uint8), size)
        for im in images
    ]


_LOSSY_MASK_WARNED = False  # the lossy-mask warning is given once per process (tests reset it)


def _webp_is_lossy(path: Path) -> bool:
    """True if a WebP file's image data is a ``VP8 `` chunk (lossy) rather than ``VP8L`` (lossless)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
                return False
            while len(chunk := f.read(8)) == 8:
                fourcc, n = chunk[:4], int.from_bytes(chunk[4:], "little")
                if fourcc in (b"VP8 ", b"VP8L"):
                    return fourcc == b"VP8 "
                if (
                    fourcc == b"ANMF"
                ):  # an animation frame: 16 bytes of frame header, then its own chunks
                    f.seek(16, os.SEEK_CUR)
                    continue
                f.seek(n + (n & 1), os.SEEK_CUR)
    except OSError:
        pass
    return False


def _lossy_kind(path: Path, img: Image.Image) -> str | None:
    """``"JPEG"`` or ``"lossy WebP"`` when a mask file is stored lossily, else None."""
    fmt, suffix = (img.format or "").upper(), path.suffix.lower()
    if fmt == "JPEG" or suffix in (".jpg", ".jpeg"):
        return "JPEG"
    if (fmt == "WEBP" or suffix == ".webp") and _webp_is_lossy(path):
        return "lossy WebP"
    return None


def _warn_lossy_mask(path: Path, kind: str) -> None:
    global _LOSSY_MASK_WARNED
    if _LOSSY_MASK_WARNED:
        return
    _LOSSY_MASK_WARNED = True
    warnings.warn(
        f"mask {path} is stored as {kind}, a lossy format: its compression noise (faint grey pixels "
        f"around edges and in black areas) is removed by binarising at half the range (>= 128 of 255), "
        f"but edges may still shift by a pixel; store masks as PNG to keep them exact. (Said once, for "
        f"the first such mask.)",
        stacklevel=3,
    )


LABEL_MAP_MAX = (
    31  # a lossless mask whose values all stay at or below this holds class ids: non-zero = defect
)
_BIT_RANGES = (255, 1023, 4095, 16383, 65535)  # 8, 10, 12, 14 and 16 bits


def real_range(peak: float) -> int:
    """The full scale of integer pixels whose largest value is ``peak``: the smallest of 8, 10, 12, 14 or 16 bits
    (``2**b - 1``) that holds it. A 12-bit camera's image stored in a 16-bit file has range 4095, not 65535."""
    return next((r for r in _BIT_RANGES if peak <= r), _BIT_RANGES[-1])


def _binarise(values: np.ndarray, lossless: bool) -> np.ndarray:
    """The mask rule for one channel (or the colour channels together): defect where a value is above half of
    the values' real range (:func:`real_range`; ``> 0.5`` for floats up to 1); a lossless mask whose values all
    stay <= :data:`LABEL_MAP_MAX` is a label map (0/1, class ids 0..K), defect where non-zero."""
    peak = float(values.max(initial=0))
    if values.dtype.kind == "f" and peak <= 1.0:
        return values > 0.5
    if lossless and peak <= LABEL_MAP_MAX:
        return values > 0
    return values > real_range(peak) / 2


def _mask_channels(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """A mask's colour values, (H, W) or (H, W, C), and its alpha channel (None without one)."""
    if img.mode == "1":
        return np.asarray(img).astype(np.uint8), None
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "L"):
        return np.asarray(img), None
    if img.mode == "P":  # a palette: the colours it stands for
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        img = img.convert("LA" if img.mode in ("LA", "La") else "RGBA")
        arr = np.asarray(img)
        return arr[..., :-1].squeeze(-1) if arr.shape[-1] == 2 else arr[..., :3], arr[..., -1]
    return np.asarray(img.convert("RGB")), None


def _colour_defect(colour: np.ndarray, lossless: bool, path: Path) -> np.ndarray:
    """Defect pixels of a colour mask: any channel set, as long as the mask marks its defects in one colour
    (white, or a red outline on black). Two colours that mark different pixels (a class-coloured label map) are
    refused; a lossy (JPEG) mask takes its brightest channel, since compression noise tints the edges."""
    if colour.ndim == 2:
        return _binarise(colour, lossless)
    if not lossless:
        return _binarise(colour.max(axis=2), lossless=False)
    on = _binarise(colour, lossless)  # (H, W, C): each channel by the same rule
    marked = on.any(axis=2)
    kinds = (
        np.unique(on[marked].reshape(-1, on.shape[2]), axis=0) if marked.any() else np.zeros((0, 3))
    )
    if len(kinds) > 1:
        raise DataError(
            f"mask {path} marks defects in {len(kinds)} different colours (its channels disagree "
            f"about which pixels are defect): a mask holds one defect region per image; save it "
            f"as a grey image, white (or any non-zero value) = defect, black = normal"
        )
    return marked


def mask_defect(img: Image.Image, path: Path, lossless: bool = True) -> np.ndarray:
    """The binarisation rule for masks, (H, W) bool. Grey masks (8/16-bit, float, mode ``"1"``):
    :func:`_binarise`. Colour masks: :func:`_colour_defect`. An alpha channel that varies is read as the mask
    when the colour is the same everywhere (a defect drawn only into transparency); when both vary they must
    agree, otherwise the mask is refused (:class:`DataError`) -- never read as 100 % or 0 % defect."""
    colour, alpha = _mask_channels(img)
    if alpha is None or alpha.min() == alpha.max():
        return _colour_defect(colour, lossless, path)
    alpha_on = alpha >= 128
    if not (
        colour != colour[0, 0]
    ).any():  # the colour is uniform (colour[0, 0]: one pixel's value or channels)
        return alpha_on
    defect = _colour_defect(colour, lossless, path)
    if (defect != alpha_on).any():
        raise DataError(
            f"mask {path} has a transparency (alpha) channel that marks other pixels than its colour "
            f"channels do: save it without transparency, white (or any non-zero value) = defect, "
            f"black = normal"
        )
    return defect


def load_mask(path, size: int | None = None) -> np.ndarray:
    """Decode a mask to (size, size) uint8 in {0, 1} by :func:`mask_defect`'s rule, then nearest-neighbour
    resize.

    Defect = a value above half of the real range of the mask's values (8-bit: ``>= 128``; a 16-bit file: half
    of 65535, or of 255 / 4095 when its values stay within 8 / 12 bits); a lossless mask whose values stay
    <= :data:`LABEL_MAP_MAX` is a label map (non-zero = defect). So the faint noise that JPEG leaves around edges
    and in black areas is not counted as defect; a JPEG or lossy WebP mask is said once per process
    (:func:`warnings.warn`)."""
    path = Path(path)
    img = open_image(path)
    lossy = _lossy_kind(path, img)
    try:
        img.load()
    except Exception as err:
        raise DataError(f"mask {path} is corrupt or truncated ({err}): re-export it") from err
    if lossy is not None:
        _warn_lossy_mask(path, lossy)
    arr = mask_defect(img, path, lossless=lossy is None).astype(np.uint8)
    if size is not None and arr.shape != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.NEAREST))
    return arr


# --------------------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------------------
def _broken_link(path: Path) -> str:
    """``"a broken symbolic link to <target>"`` if ``path`` is one, else ``""``."""
    if path.is_symlink() and not path.exists():
        try:
            return f"a broken symbolic link to {os.readlink(path)}"
        except OSError:
            return "a broken symbolic link"
    return ""


def _broken_link_note(path: Path) -> str:
    """``" (a broken symbolic link to <target>)"`` if ``path`` is one, else ``""``: an aside for a message."""
    return f" ({note})" if (note := _broken_link(path)) else ""


def _image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (symbolic links to files count; a broken link to an image is an error,
    not a silently smaller dataset)."""
    out = []
    for p in folder.iterdir():
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.is_file():
            out.append(p)
        elif note := _broken_link(p):
            raise DataError(f"{p} is {note}: fix the link or remove it")
    return sorted(out)


def _dir_identity(path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the folder ``path`` leads to (links followed), or None if it is not a folder."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _is_within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip(os.sep) + os.sep)


def _name_list(items: list[str], limit: int = 8) -> str:
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def discover_categories(root) -> dict[str, Path]:
    """All categories under ``root`` (any depth; a category is a folder with ``train/good``), by name.

    The name is the folder's own name; if two folders share it, their path relative to ``root`` is used.
    A category does not contain further categories, and hidden folders (``.name``) are skipped.

    Symbolic links to folders are followed (the root itself, intermediate folders and the categories, so
    ``my_data/bottle -> /downloads/mvtec/bottle`` works), with loop protection: every folder is visited at
    most once by its identity on disk (``st_dev``, ``st_ino``), and a link to a folder already searched or to
    an ancestor of the link is not entered, so ``a/loop -> ..`` or ``a -> b``, ``b -> a`` cannot hang the
    search or list a category twice. Real folders are searched before links, so a category reachable both
    directly and through a link keeps its direct path; of several links the one with fewest link hops, then
    the first in sorted order, wins. Broken links are skipped (and named in the error if nothing is found).
    The returned paths are as reached from ``root`` (links not resolved).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(
            f"data folder {root} does not exist{_broken_link_note(root)}: pass --data with a folder "
            f"of categories in MVTec layout, or omit --data to use the synthetic set"
        )
    if not root.is_dir():
        raise DataError(f"--data {root} is a file, not a folder of categories")

    search = _CategorySearch(root).run()
    found, broken, looping, to_files = search.found, search.broken, search.looping, search.to_files
    if not found:
        hints = [
            f"{what}: {_name_list(sorted(names))}"
            for what, names in (
                ("broken symbolic links", broken),
                ("symbolic links back into folders already searched", looping),
                ("symbolic links to files, not folders", to_files),
            )
            if names
        ]
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise DataError(
            f"no categories found under {root}: a category is a folder holding train/good/ with normal images "
            f"(MVTec AD layout: <category>/train/good, <category>/test/<defect>, <category>/ground_truth/<defect>)"
            f"{hint}"
        )
    names = [p.name for p in found]
    out = {}
    for p in sorted(found):
        name = p.name if names.count(p.name) == 1 else p.relative_to(root).as_posix()
        out[name] = p
    return out


class _CategorySearch:
    """The search behind :func:`discover_categories`: depth-first through real folders, and the folders reached
    through one more symbolic link only after all those reached with fewer; every folder once, by identity."""

    def __init__(self, root: Path):
        self.root = root
        self.found: list[Path] = []
        self.seen: set[tuple[int, int]] = set()
        self.broken: list[str] = []  # links whose target does not exist
        self.looping: list[str] = []  # links back into a folder already searched, or to an ancestor
        self.to_files: list[str] = []  # links to something that is not a folder

    def rel(self, p: str) -> str:
        return Path(p).relative_to(self.root).as_posix()

    def run(self) -> "_CategorySearch":
        level = [self.root]  # folders to search, all reached through the same number of links
        while level:
            level = [link for start in sorted(level) for link in self.search_from(start)]
        return self

    def search_from(self, start: Path) -> list[Path]:
        """Depth-first through the real folders under ``start``; returns the links to folders to follow next."""
        ident = _dir_identity(start)
        if ident is None:
            return []
        if ident in self.seen:
            if start != self.root:
                self.looping.append(self.rel(str(start)))
            return []
        links, stack = [], [start]
        while stack:
            here = stack.pop()
            ident = _dir_identity(here)
            if ident is None or (ident in self.seen and here != start):
                continue
            self.seen.add(ident)
            if (here / "train" / "good").is_dir():
                self.found.append(here)
                continue  # a category does not contain further categories
            subdirs, more = self.entries(here)
            links += more
            stack.extend(reversed(subdirs))
        return links

    def entries(self, here: Path) -> tuple[list[Path], list[Path]]:
        """(real sub-folders, links to folders to follow) of ``here``, by name; hidden entries skipped;
        broken links, links to files and links to ``here`` or an ancestor noted."""
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return [], []  # unreadable folder: skipped, as os.walk does
        subdirs, links, real_here = [], [], None
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_link, is_dir = e.is_symlink(), e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_link:
                if is_dir:
                    subdirs.append(Path(e.path))
            elif not os.path.exists(e.path):
                self.broken.append(self.rel(e.path))
            elif not os.path.isdir(e.path):
                self.to_files.append(self.rel(e.path))
            else:
                real_here = real_here or os.path.realpath(here)
                if _is_within(real_here, os.path.realpath(e.path)):
                    self.looping.append(
                        self.rel(e.path)
                    )  # a link to this folder or one of its ancestors
                else:
                    links.append(
                        Path(e.path)
                    )  # searched after all folders reached with fewer links
        return subdirs, links


def _mask_for(category_dir: Path, defect: str, image: Path) -> Path | None:
    gt = category_dir / "ground_truth" / defect
    for candidate in (
        gt / f"{image.stem}_mask.png",
        gt / f"{image.stem}.png",
        gt / f"{image.stem}_mask{image.suffix}",
        gt / image.stem / "000.png",
    ):
        if candidate.is_file():
            return candidate
        if note := _broken_link(candidate):
            raise DataError(f"mask {candidate} is {note}: fix the link or remove it")
    return None


def scan_category(name: str, folder: Path, split: str, check_masks: bool = True) -> list[Record]:
    """The records of one category's split, with layout checks."""
    folder = Path(folder)
    if split == "train":
        train = folder / "train" / "good"
        files = _image_files(train)
        if not files:
            raise DataError(
                f"{train} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): put the normal "
                f"training images of category {name!r} there"
            )
        return [Record(p, name, 0, "good", None) for p in files]
    if split != "test":
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    test = folder / "test"
    if not test.is_dir():
        raise DataError(
            f"category {name!r} has no test/ folder at {test}{_broken_link_note(test)}: add test/good "
            f"and test/<defect> folders, or train only"
        )
    records: list[Record] = []
    for d in sorted(test.iterdir()):
        if not d.name.startswith(".") and (note := _broken_link(d)):
            raise DataError(f"{d} is {note}: fix the link or remove it")
    for sub in sorted(d for d in test.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for p in _image_files(sub):
            if sub.name == "good":
                records.append(Record(p, name, 0, "good", None))
                continue
            mask = _mask_for(folder, sub.name, p)
            if mask is None and check_masks:
                raise DataError(
                    f"defect image {p} has no mask: expected {folder / 'ground_truth' / sub.name / (p.stem + '_mask.png')}"
                    f". Add the mask (white = defect), or evaluate image scores only: python -m unistad_edu eval "
                    f"--image-only (in Python: check_masks=False, evaluate(..., pixel=False))"
                )
            records.append(Record(p, name, 1, sub.name, mask))
    if not records:
        raise DataError(
            f"{test} holds no images: add test/good and test/<defect> images of category {name!r}"
        )
    return records


# --------------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------------
class MVTecDataset:
    """One split over one or many categories of an MVTec-layout folder tree (a map-style dataset: ``len`` and
    ``[i]``, which is all ``torch.utils.data.DataLoader`` asks; torch is imported only when an item is built, so
    code that only decodes images -- serving an exported model -- runs without it).

    Args:
        root: folder holding categories at any depth.
        split: ``"train"`` (``train/good``) or ``"test"`` (``test/*`` with masks).
        categories: names to use (default: all found).
        image_size: side ``S`` of the square model input.
        keep_in_memory: keep decoded uint8 images after first use (the real sets here fit in < 0.5 GB).
        check_masks: require a mask for every defect image (default True).
    """

    def __init__(
        self,
        root,
        split: str = "train",
        categories: Sequence[str] | None = None,
        image_size: int = 256,
        keep_in_memory: bool = True,
        check_masks: bool = True,
        records: Sequence[Record] | None = None,
    ):
        self.root = Path(root)
        self.split = split
        self.image_size = int(image_size)
        self.keep_in_memory = keep_in_memory
        if records is None:
            found = discover_categories(root)
            if categories:
                missing = [c for c in categories if c not in found]
                if missing:
                    raise DataError(
                        f"categories {missing} not found under {root}; found: {sorted(found)}"
                    )
                found = {c: found[c] for c in categories}
            records = [
                r
                for name, folder in found.items()
                for r in scan_category(name, folder, split, check_masks)
            ]
            self._check_headers(records)
        self.records = list(records)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    @staticmethod
    def _check_headers(records: Iterable[Record]) -> None:
        for r in records:
            img = open_image(r.path)
            if r.mask_path is not None:
                mask = open_image(r.mask_path)
                if mask.size != img.size:
                    raise DataError(
                        f"mask {r.mask_path} is {mask.size[0]}x{mask.size[1]} but its image {r.path} "
                        f"is {img.size[0]}x{img.size[1]}: masks must have the image's size"
                    )

    @property
    def categories(self) -> list[str]:
        return sorted({r.category for r in self.records})

    def subset(self, indices: Sequence[int]) -> "MVTecDataset":
        """A dataset over some of these records (shares nothing mutable)."""
        return MVTecDataset(
            self.root,
            self.split,
            image_size=self.image_size,
            keep_in_memory=self.keep_in_memory,
            records=[self.records[i] for i in indices],
        )

    def evenly(self, n: int | None) -> "MVTecDataset":
        """At most ``n`` images per category, evenly spread over each category's (sorted) files, so a capped
        set still covers every defect type; ``n=None`` keeps everything."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"evenly needs n >= 1 images per category, not {n}")
        keep: list[int] = []
        for cat in self.categories:
            ids = [i for i, r in enumerate(self.records) if r.category == cat]
            keep += [ids[j] for j in np.linspace(0, len(ids) - 1, min(n, len(ids))).astype(int)]
        return self.subset(keep)

    def by_category(self) -> dict[str, "MVTecDataset"]:
        return {
            c: self.subset([i for i, r in enumerate(self.records) if r.category == c])
            for c in self.categories
        }

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            row = out.setdefault(r.category, {})
            row[r.defect] = row.get(r.defect, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self.records)

    def _decode(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        if i in self._cache:
            return self._cache[i]
        r = self.records[i]
        image = load_image(r.path, self.image_size)
        mask = load_mask(r.mask_path, self.image_size) if r.mask_path is not None else None
        if self.keep_in_memory:
            self._cache[i] = (image, mask)
        return image, mask

    def __getitem__(self, i: int) -> dict:
        import torch

        r = self.records[i]
        image, mask = self._decode(i)
        img_t = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)  # (3, S, S)
        if mask is None:
            mask_t = torch.zeros(1, self.image_size, self.image_size)
        else:
            mask_t = torch.from_numpy(mask.astype(np.float32, copy=True))[None]  # (1, S, S)
        return {
            "image": img_t,
            "mask": mask_t,
            "label": r.label,
            "category": r.category,
            "defect": r.defect,
            "path": str(r.path),
            "index": i,
        }


def holdout_split(
    dataset: MVTecDataset,
    fraction: float = 0.1,
    seed: int = 0,
    min_per_category: int = 2,
    min_tail: int = 0,
) -> tuple[MVTecDataset, MVTecDataset]:
    """Split normal training images into (train, held-out) per category, reproducibly.

    The held-out normal images calibrate the anomaly thresholds, so a user needs no defective images for them.
    A category of n images gives ``round(fraction * n)``, but at least ``min(min_tail, n // 3)`` (enough to
    fit its score tail without taking more than a third of its images: 31 images give 10) and at least
    ``min_per_category``; it keeps at least one training image; categories with fewer than
    ``min_per_category + 1`` images give none to the held-out part.
    """
    rng = np.random.default_rng(seed)
    train_idx, held_idx = [], []
    for cat in dataset.categories:
        idx = np.array([i for i, r in enumerate(dataset.records) if r.category == cat])
        rng.shuffle(idx)
        n = len(idx)
        n_held = (
            0
            if fraction <= 0 or n <= min_per_category
            else min(n - 1, max(min_per_category, round(n * fraction), min(min_tail, n // 3)))
        )
        held_idx += sorted(idx[:n_held].tolist())
        train_idx += sorted(idx[n_held:].tolist())
    return dataset.subset(sorted(train_idx)), dataset.subset(sorted(held_idx))


def collate(samples: list[dict]) -> dict:
    """Stack tensors, keep strings as lists (DataLoader collate_fn)."""
    import torch

    out = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], (int, np.integer)):
            out[key] = torch.tensor(vals)
        else:
            out[key] = vals
    return out


def default_data_root(cache_dir=None) -> Path:
    """The embedded default: the synthetic multi-class set, generated once into a cache folder."""
    from .files import cache_root
    from .synthetic import make_synthetic

    return make_synthetic(Path(cache_dir or cache_root()) / "synthetic")


def find_data(prefer_real: bool = True) -> tuple[Path, str]:
    """Where a lesson or bench should read data: ``$UNISTAD_DATA``, else the real categories in
    ``../shared/datasets`` (looked for from the working directory upwards), else the synthetic set.
    Returns (root, description)."""
    env = os.environ.get("UNISTAD_DATA")
    if env:
        return Path(env), f"$UNISTAD_DATA ({env})"
    if prefer_real:
        here = Path.cwd().resolve()
        for parent in [here, *here.parents]:
            cand = parent / "shared" / "datasets"
            if cand.is_dir():
                return cand, f"real photographed categories in {cand}"
    return default_data_root(), "the synthetic multi-class set"
