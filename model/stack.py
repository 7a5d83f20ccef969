"""Read a Grand Challenge Track-2 stack (multi-page TIFF or MetaImage) into uint8 RGB pages.

Input rules (each page becomes one uint8 [128, 128, 3] RGB patch, in page order):
- formats: ``.tif`` / ``.tiff`` / ``.mha`` (SimpleITK); a 2-D image is a stack of one page;
- channels: RGB as is; RGBA -> alpha dropped; grayscale (and grayscale + alpha) -> gray replicated to RGB;
  palette TIFFs arrive expanded to RGB; any other channel count is an input error;
- depth: 8-bit as is; 16-bit (also palette colours) -> value / 257 (full range to full range); floats ->
  x 255 when all values lie in [0, 1], else clipped to [0, 255]; other integer types clipped to [0, 255];
- size: a page larger than 128 px along an axis is centre-cropped, a smaller one edge-padded (replicating
  the border), so the figure stays at the centre at its scanned resolution; never resized;
- unusable files (empty, truncated, not an image, zero pages, more than MAX_PIXELS values) -> InputError
  naming the file and the problem. A .mha must hold its own pixels (``ElementDataFile = LOCAL``): one that
  points at other files is refused. TIFFs are checked structurally first (every page directory and every
  strip/tile must lie inside the file), so a truncated stack is refused rather than read short.
"""

from __future__ import annotations

from pathlib import Path

import struct

import numpy as np

PATCH_SIZE = 128
SUFFIXES = (".tif", ".tiff", ".mha")
MAX_PIXELS = 2 ** 31  # values in the decoded stack (~2 GB as uint8): refuse larger before decoding


class InputError(ValueError):
    """Unusable input: the message names the file and the problem."""


def read_stack(path: str | Path, size: int = PATCH_SIZE) -> np.ndarray:
    """The stack's pages as uint8 [N, size, size, 3], in page order."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    suffix = path.suffix.lower()
    tiff_pages = check_tiff(path) if suffix in (".tif", ".tiff") else None
    if suffix == ".mha":
        check_mha_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        dims, comps = list(reader.GetSize()), reader.GetNumberOfComponents()
        if int(np.prod(dims, dtype=np.int64)) * comps > MAX_PIXELS:
            raise InputError(f"{path}: image of size {dims} x {comps} channels is too large")
        image = reader.Execute()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - SimpleITK raises RuntimeError with ITK's message
        raise InputError(f"{path}: cannot read the image ({_first_line(exc)})") from exc
    pages = to_pages(sitk.GetArrayFromImage(image), image.GetDimension(), image.GetNumberOfComponentsPerPixel(),
                     path, size)
    if tiff_pages is not None and tiff_pages != len(pages):
        raise InputError(f"{path}: the file has {tiff_pages} page directories but {len(pages)} pages could be read")
    return pages


_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_DATA_TAGS = ((273, 279), (324, 325))  # (StripOffsets, StripByteCounts), (TileOffsets, TileByteCounts)


def check_tiff(path: Path, max_pages: int = 1_000_000) -> int:
    """Walk the TIFF (or BigTIFF) page directories; every directory and image data block must lie inside
    the file. Returns the number of pages; raises InputError for a broken or truncated file."""
    data = path.read_bytes()
    size = len(data)

    def bad(problem: str) -> InputError:
        return InputError(f"{path}: not a readable TIFF ({problem})")

    if data[:2] not in (b"II", b"MM"):
        raise bad("no TIFF byte-order mark")
    end = "<" if data[:2] == b"II" else ">"
    try:
        magic = struct.unpack_from(end + "H", data, 2)[0]
        if magic == 42:
            count_fmt, entry_size, offset_fmt, first = "H", 12, "I", struct.unpack_from(end + "I", data, 4)[0]
        elif magic == 43:
            count_fmt, entry_size, offset_fmt, first = "Q", 20, "Q", struct.unpack_from(end + "Q", data, 8)[0]
        else:
            raise bad(f"unknown version {magic}")
        count_size, value_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
        pages, offset, seen = 0, first, set()
        while offset:
            if offset in seen or pages >= max_pages:
                raise bad("page directories loop")
            seen.add(offset)
            if offset + count_size > size:
                raise bad(f"page {pages + 1} directory lies beyond the end of the file (truncated?)")
            n = struct.unpack_from(end + count_fmt, data, offset)[0]
            entries_end = offset + count_size + n * entry_size
            if entries_end + value_size > size:
                raise bad(f"page {pages + 1} directory runs past the end of the file (truncated?)")
            tags = {}
            for i in range(n):
                e = offset + count_size + i * entry_size
                tag, typ = struct.unpack_from(end + "HH", data, e)
                cnt = struct.unpack_from(end + offset_fmt, data, e + 4)[0]
                width = _TIFF_TYPE_SIZES.get(typ, 1)
                inline = cnt * width <= value_size
                where = e + 4 + value_size if inline else struct.unpack_from(end + offset_fmt, data, e + 4 + value_size)[0]
                if where + cnt * width > size:
                    raise bad(f"page {pages + 1} tag {tag} points beyond the end of the file (truncated?)")
                if tag in (273, 279, 324, 325) and typ in (3, 4, 16):
                    fmt = {3: "H", 4: "I", 16: "Q"}[typ]
                    tags[tag] = struct.unpack_from(f"{end}{cnt}{fmt}", data, where)
            for offsets_tag, counts_tag in _DATA_TAGS:
                for start, length in zip(tags.get(offsets_tag, ()), tags.get(counts_tag, ())):
                    if start + length > size:
                        raise bad(f"page {pages + 1} image data lies beyond the end of the file (truncated?)")
            pages += 1
            offset = struct.unpack_from(end + offset_fmt, data, entries_end)[0]
    except struct.error as exc:
        raise bad(str(exc)) from None
    if pages == 0:
        raise bad("no pages")
    return pages


def check_mha_header(path: Path) -> None:
    """A .mha must carry its pixels itself: ``ElementDataFile = LOCAL`` (anything else would read other files)."""
    with path.open("rb") as f:
        head = f.read(65536)
    for line in head.split(b"\n"):
        key, _, value = line.partition(b"=")
        if key.strip() == b"ElementDataFile":
            if value.strip() != b"LOCAL":
                raise InputError(f"{path}: MetaImage pixel data must be LOCAL, not {value.strip()[:80].decode(errors='replace')!r}")
            return
    raise InputError(f"{path}: not a MetaImage (no ElementDataFile = LOCAL in the header)")


def to_pages(array: np.ndarray, dimension: int, components: int, path: Path, size: int = PATCH_SIZE) -> np.ndarray:
    """SimpleITK array ([N,]H,W[,C]) -> uint8 [N, size, size, 3] by the module's rules."""
    if dimension not in (2, 3):
        raise InputError(f"{path}: {dimension}-D image, expected 2-D pages or a 3-D stack of pages")
    if components == 1:
        array = array[..., None]
    if dimension == 2:
        array = array[None]
    if array.ndim != 4 or array.shape[0] == 0 or 0 in array.shape[1:3]:
        raise InputError(f"{path}: no pages (array shape {array.shape})")
    if components in (1, 2):
        array = np.repeat(array[..., :1], 3, axis=3)
    elif components == 4:
        array = array[..., :3]
    elif components != 3:
        raise InputError(f"{path}: {components} channels per pixel, expected 1 to 4")
    return fit_size(to_uint8(array, path), size)


def to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.asarray(array)
    if array.dtype.kind == "f":
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            raise InputError(f"{path}: no finite pixel values")
        scale = 255.0 if finite.min() >= 0 and finite.max() <= 1 else 1.0
        return np.clip(np.nan_to_num(array, nan=0.0) * scale, 0, 255).round().astype(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 2:
        return np.round(np.clip(array, 0, None) / 257.0).astype(np.uint8)
    if array.dtype.kind in "iub":
        return np.clip(array, 0, 255).astype(np.uint8)
    raise InputError(f"{path}: unsupported pixel type {array.dtype}")


def fit_size(pages: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """Centre-crop or edge-pad each spatial axis of [N, H, W, 3] to ``size``."""
    for axis in (1, 2):
        n = pages.shape[axis]
        if n > size:
            start = (n - size) // 2
            pages = np.take(pages, range(start, start + size), axis=axis)
        elif n < size:
            before = (size - n) // 2
            pad = [(0, 0)] * 4
            pad[axis] = (before, size - n - before)
            pages = np.pad(pages, pad, mode="edge")
    return np.ascontiguousarray(pages)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "itk::" not in line and not line.startswith(("File:", "Line:", "Location:"))]
    return (useful or lines or [type(exc).__name__])[-1][:200]
