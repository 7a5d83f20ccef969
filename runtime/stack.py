"""Read a Grand Challenge Track-2 stack (multi-page TIFF or MetaImage) into uint8 RGB pages.

Input rules (each page becomes one uint8 [128, 128, 3] RGB patch, in page order; patch images, PNG/JPEG/BMP,
follow the same channel, depth and size rules: :func:`read_patch`, and :func:`read_image` reads either kind for
``amf predict`` and for training alike):
- formats: ``.tif`` / ``.tiff`` (read as TIFF) and ``.mha`` (read as MetaImage), suffix case ignored,
  decoded by SimpleITK, but 8-bit RGB TIFFs (Grand Challenge's stacks) by tifffile, the same pixels and quicker
  to load, where it can (:func:`_read_rgb8_tiff`); a 2-D image is a stack of one page;
- channels: RGB as is; RGBA -> alpha dropped; grayscale -> gray replicated to R, G, B (also gray + alpha
  in a .mha; in a TIFF, which ITK cannot decode correctly, it is an input error); palette TIFFs -> RGB
  through their colour map; CMYK/YCbCr TIFFs -> RGB (libtiff); any other channel count is an input error;
- depth: 8-bit as is; 16-bit -> round(value / 257) (full range to full range; tiled 16-bit gray TIFFs, which ITK
  decodes through libtiff's 8-bit RGBA reader: value >> 8, within 1 of it); 16-bit TIFF colour maps ->
  value >> 8 (exact whether the map was written as v * 256 or v * 257); floats -> x 255 for a page whose
  values all lie in [0, 1], else clipped to [0, 255] (NaN -> 0); other integer types clipped to [0, 255];
- size: a page larger than 128 px along an axis is centre-cropped, a smaller one edge-padded (replicating
  the border), so the figure stays at the centre at its scanned resolution; never resized;
- unusable files -> InputError naming the file and the problem: empty, garbage, truncated (every TIFF
  page directory and strip/tile must lie inside the file, so a cut stack is refused rather than read
  short), TIFF pages that differ from page 1 in size or pixel format (ITK would misread them), zero
  pages, images neither 2-D nor 3-D, more than 4 channels, pixel types other than integers and floats,
  more than MAX_DECODED_BYTES (2 GiB) decoded, and a .mha whose pixels live in another file (only
  ``ElementDataFile = LOCAL``).

Memory: the stack is converted CHUNK_BYTES of decoded pixels at a time into the uint8 result; a large
.mha is also read chunk by chunk (ITK streams MetaImages; its TIFF reader always decodes every page).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.contract import PATCH_SIZE
from runtime.errors import InputError

SUFFIXES = (".tif", ".tiff", ".mha")  # stacks
PATCH_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # single patch images (amf predict, training data)
MAX_DECODED_BYTES = 2 ** 31  # refuse larger stacks before decoding (~43,000 pages of 8-bit RGB 128 x 128)
CHUNK_BYTES = 64 * 2 ** 20  # decoded pixels converted (and, for .mha, read) at a time
_STDERR_LOCK = threading.Lock()  # _libtiff_messages: one redirection of file descriptor 2 at a time


def read_image(path: str | Path, size: int | None = PATCH_SIZE) -> np.ndarray:
    """A stack (SUFFIXES: :func:`read_stack`) or a patch image (PATCH_SUFFIXES: :func:`read_patch`) -> uint8
    [N, size, size, 3]; ``size`` None keeps the pages' own size. The one reader of training and inference."""
    return read_stack(path, size) if Path(path).suffix.lower() in SUFFIXES else read_patch(path, size)


def read_patch(path: str | Path, size: int | None = PATCH_SIZE) -> np.ndarray:
    """One patch image (PNG, JPEG, BMP, decoded by SimpleITK) -> uint8 [1, size, size, 3] by the module's channel
    and depth rules (16-bit: round(value / 257); palette: through its colour map; RGBA: alpha dropped; gray:
    replicated; a gray + alpha PNG, which ITK cannot decode, is an input error)."""
    import SimpleITK as sitk

    try:
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the image ({str(exc).strip().splitlines()[-1][:200]})") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{path}: expected a 2-D gray or colour image, got array shape {pixels.shape}")
    rgb = to_uint8((np.repeat(pixels[..., :1], 3, axis=2) if pixels.shape[2] <= 2 else pixels[..., :3])[None])
    return rgb if size is None else fit_size(rgb, size)


def read_stack(path: str | Path, size: int | None = PATCH_SIZE) -> np.ndarray:
    """The stack's pages as uint8 [N, size, size, 3], in page order (``size`` None: [N, height, width, 3])."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    is_tiff = path.suffix.lower() != ".mha"
    layout = check_tiff(path) if is_tiff else check_mha_header(path)
    if layout.rgb8 and (pages := _read_rgb8_tiff(path, size)) is not None:
        return pages
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("TIFFImageIO" if is_tiff else "MetaImageIO")
    reader.SetFileName(str(path))
    try:
        with _libtiff_messages() as printed:
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable {'TIFF' if is_tiff else 'MetaImage'} "
                         f"({_itk_message(exc, printed)})") from None
    dims, channels = list(reader.GetSize()), reader.GetNumberOfComponents()
    dtype = _pixel_dtype(sitk, reader.GetPixelID(), path)
    if len(dims) not in (2, 3):
        raise InputError(f"{path}: {len(dims)}-D image, expected 2-D pages or a 3-D stack of pages")
    if not 1 <= channels <= 4:
        raise InputError(f"{path}: {channels} channels per pixel, expected 1 to 4")
    width, height, n_pages = dims[0], dims[1], dims[2] if len(dims) == 3 else 1
    if 0 in (width, height, n_pages):
        raise InputError(f"{path}: no pages (image size {dims})")
    page_bytes = width * height * channels * dtype.itemsize
    if n_pages * page_bytes > MAX_DECODED_BYTES:
        raise InputError(f"{path}: {n_pages} pages of {width} x {height} x {channels} {dtype} are more than "
                         f"{MAX_DECODED_BYTES / 2 ** 30:g} GiB decoded")
    if layout.pages is not None and layout.pages != n_pages:
        raise InputError(f"{path}: {layout.pages} page directories but {n_pages} pages readable")

    # centre region of each page (ITK index order x, y); pages are padded after conversion if smaller
    x0, y0 = (0, 0) if size is None else (max(0, (width - size) // 2), max(0, (height - size) // 2))
    w, h = (width, height) if size is None else (min(width, size), min(height, size))
    step = max(1, CHUNK_BYTES // page_bytes)
    pages = np.empty((n_pages, height, width, 3) if size is None else (n_pages, size, size, 3), np.uint8)
    if not is_tiff and len(dims) == 3 and n_pages > step:  # stream a large MetaImage chunk by chunk
        for start in range(0, n_pages, step):
            count = min(step, n_pages - start)
            reader.SetExtractIndex([x0, y0, start])
            reader.SetExtractSize([w, h, count])
            image = _execute(reader, path)
            _convert(sitk.GetArrayViewFromImage(image), channels, layout.palette, pages[start:start + count])
        return pages
    image = _execute(reader, path)  # must outlive the array view below
    decoded = sitk.GetArrayViewFromImage(image)
    if len(dims) == 2:
        decoded = decoded[None]
    decoded = decoded[:, y0:y0 + h, x0:x0 + w]
    for start in range(0, n_pages, step):
        _convert(decoded[start:start + step], channels, layout.palette, pages[start:start + step])
    return pages


def _read_rgb8_tiff(path: Path, size: int | None) -> np.ndarray | None:
    """The pages of an 8-bit RGB TIFF as tifffile decodes them, the same pixels as SimpleITK's (:func:`check_tiff`
    walked it and found every page one ITK counts, stored as it shows it: ``Layout.rgb8``). tifffile loads in a
    third of SimpleITK's time, which counts in the container's cold start (docs/performance.md). None where it
    cannot decode them (a compression it has no codec for, a damaged strip): SimpleITK then reads the file, and
    names any problem."""
    import logging

    import tifffile

    logger = logging.getLogger("tifffile")
    if not logger.handlers:  # its warnings must not reach stderr (Python's last-resort handler)
        logger.addHandler(logging.NullHandler())
    try:
        with tifffile.TiffFile(path) as tif:
            first, n_pages = tif.pages.first, len(tif.pages)
            if first.shape[-1:] != (3,) or first.dtype != np.uint8 or n_pages * first.size > MAX_DECODED_BYTES:
                return None
            pages = tif.asarray(key=range(n_pages)).reshape(n_pages, *first.shape)
    except Exception:  # noqa: BLE001 - tifffile raises many types; SimpleITK's read reports the problem
        return None
    return pages if size is None else np.ascontiguousarray(fit_size(pages, size))


def fit_size(pages: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """Centre-crop or edge-pad each spatial axis of [N, H, W, C] to ``size``."""
    for axis in (1, 2):
        n = pages.shape[axis]
        if n > size:
            start = (n - size) // 2
            pages = pages[:, start:start + size] if axis == 1 else pages[:, :, start:start + size]
        elif n < size:
            pad = [(0, 0)] * pages.ndim
            pad[axis] = ((size - n) // 2, size - n - (size - n) // 2)
            pages = np.pad(pages, pad, mode="edge")
    return pages


def to_uint8(pixels: np.ndarray, palette: bool = False) -> np.ndarray:
    """Pixel values [N, H, W, C] -> uint8 by the module's depth rules."""
    if pixels.dtype == np.uint8:
        return pixels
    if palette and pixels.dtype == np.uint16:
        return (pixels >> 8).astype(np.uint8)
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize == 2:  # round(v / 257), in integers
        return ((np.clip(pixels, 0, None).astype(np.uint32) + 128) // 257).astype(np.uint8)
    if pixels.dtype.kind == "f":
        pixels = np.nan_to_num(pixels, nan=0.0)
        flat = pixels.reshape(len(pixels), -1)
        unit = (flat.min(axis=1) >= 0) & (flat.max(axis=1) <= 1)  # per page
        scale = np.where(unit, 255.0, 1.0).reshape(-1, *[1] * (pixels.ndim - 1))
        return np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _convert(decoded: np.ndarray, channels: int, palette: bool, out: np.ndarray) -> None:
    """ITK pixels [k, h, w(, C)] -> ``out`` uint8 [k, size, size, 3] (gray is broadcast to RGB)."""
    if channels == 1:
        decoded = decoded[..., None]
    rgb = to_uint8(decoded[..., :1] if channels <= 2 else decoded[..., :3], palette)
    out[...] = rgb if rgb.shape[1:3] == out.shape[1:3] else fit_size(rgb, out.shape[1])


def _execute(reader, path: Path):
    try:
        with _libtiff_messages() as printed:
            return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the pixel data, truncated or corrupt file "
                         f"({_itk_message(exc, printed)})") from None


@contextlib.contextmanager
def _libtiff_messages() -> Iterator[list[str]]:
    """What the C libraries print on file descriptor 2 while ITK reads (libtiff's default handlers write
    e.g. "ZIPDecode: Decoding error ..." there): captured, so that stderr keeps one line per error, and added to
    that line when the read fails; dropped when it succeeds (the run stays silent). File descriptor 2 is the
    process's: threads reading at once (training's loader) take turns."""
    with _STDERR_LOCK:
        yield from _captured_stderr()


def _captured_stderr() -> Iterator[list[str]]:
    try:
        captured_file = tempfile.TemporaryFile(prefix="amf-stderr-")
    except OSError:  # no writable temporary folder: read as it is
        yield []
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with captured_file as captured:
        os.dup2(captured.fileno(), 2)
        printed: list[str] = []
        try:
            yield printed
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            printed.extend(line.strip() for line in captured.read().decode(errors="replace").splitlines()
                           if line.strip())


def _pixel_dtype(sitk, pixel_id: int, path: Path) -> np.dtype:
    for name, dtype in (("UInt8", "u1"), ("Int8", "i1"), ("UInt16", "u2"), ("Int16", "i2"), ("UInt32", "u4"),
                        ("Int32", "i4"), ("UInt64", "u8"), ("Int64", "i8"), ("Float32", "f4"), ("Float64", "f8")):
        if pixel_id in (getattr(sitk, f"sitk{name}"), getattr(sitk, f"sitkVector{name}")):
            return np.dtype(dtype)
    raise InputError(f"{path}: unsupported pixel type ({sitk.GetPixelIDValueAsString(pixel_id)})")


def _itk_message(exc: BaseException, printed: list[str] = ()) -> str:
    """The useful part of an ITK exception (no source paths, object addresses or stale errno), after what the
    C libraries printed while reading (e.g. libtiff's decoder message)."""
    found = type(exc).__name__
    for line in str(exc).splitlines():
        match = re.search(r"(?:ITK ERROR: \w+\(0x[0-9a-f]+\)|sitk::ERROR):\s*(.+)", line)
        if match:
            found = match.group(1).strip()
            break
    return "; ".join([*printed[:2], found])[:300]


@dataclass(frozen=True)
class Layout:
    pages: int | None  # TIFF page directories (None for a MetaImage: ITK checks its data size)
    palette: bool = False  # TIFF photometric interpretation 3: ITK expands the 16-bit colour map
    rgb8: bool = False  # a TIFF of 8-bit RGB pages, one sample after another, each a page ITK counts and does not
    # turn (NewSubfileType 0 or 2, Orientation 1): :func:`_read_rgb8_tiff` may read it


_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                    16: 8, 17: 8, 18: 8}
_TIFF_INT_FORMATS = {3: "H", 4: "I", 16: "Q"}
WIDTH, HEIGHT, BITS, PHOTOMETRIC, SAMPLES, PLANAR, COLOUR_MAP, SAMPLE_FORMAT = 256, 257, 258, 262, 277, 284, 320, 339
SUBFILE_TYPE, ORIENTATION = 254, 274  # NewSubfileType (2: a page of a multi-page file), Orientation (1: as stored)
DATA_BLOCKS = ((273, 279), (324, 325))  # (StripOffsets, StripByteCounts), (TileOffsets, TileByteCounts)
# A page's pixel layout and the default of each tag. ITK sizes its buffer from page 1 and decodes every
# page into it: a later page that differs (even only a gray vs a colour palette) is misread, or overflows.
LAYOUT_TAGS = {WIDTH: 0, HEIGHT: 0, BITS: 1, PHOTOMETRIC: -1, SAMPLES: 1, PLANAR: 1, SAMPLE_FORMAT: 1}
READ_TAGS = {*LAYOUT_TAGS, COLOUR_MAP, SUBFILE_TYPE, ORIENTATION, *(tag for pair in DATA_BLOCKS for tag in pair)}


def check_tiff(path: Path, max_pages: int = 1_000_000) -> Layout:
    """Walk the TIFF (or BigTIFF) page directories: every directory and image data block must lie inside
    the file and all pages must share page 1's size and pixel layout. Raises InputError otherwise."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return _walk_tiff(data, path, max_pages)
        except struct.error as exc:
            raise InputError(f"{path}: not a readable TIFF ({exc})") from None


def _walk_tiff(data: mmap.mmap, path: Path, max_pages: int) -> Layout:
    def bad(problem: str) -> InputError:
        return InputError(f"{path}: not a readable TIFF ({problem})")

    if data[:2] not in (b"II", b"MM"):
        raise bad("no TIFF byte-order mark")
    end = "<" if data[:2] == b"II" else ">"
    magic = struct.unpack_from(end + "H", data, 2)[0]
    if magic == 42:
        count_fmt, entry_size, offset_fmt, first = "H", 12, "I", struct.unpack_from(end + "I", data, 4)[0]
    elif magic == 43:
        count_fmt, entry_size, offset_fmt, first = "Q", 20, "Q", struct.unpack_from(end + "Q", data, 8)[0]
    else:
        raise bad(f"unknown version {magic}")
    formats = end, count_fmt, entry_size, offset_fmt
    pages, offset, seen, first_layout, as_itk_reads = 0, first, set(), None, True
    while offset:
        page = pages + 1
        if offset in seen or pages >= max_pages:
            raise bad("page directories loop")
        seen.add(offset)
        tags, offset = _directory(data, offset, formats, lambda problem, page=page: bad(f"page {page} {problem}"))
        # a page ITK does not count as one (a reduced image, a mask), or one it may turn: tifffile would read
        # it otherwise (_read_rgb8_tiff)
        as_itk_reads &= (tags.get(SUBFILE_TYPE) or (0,))[0] in (0, 2) and (tags.get(ORIENTATION) or (1,))[0] == 1
        colours = tags.get(COLOUR_MAP, ())
        third = len(colours) // 3
        gray_map = colours[:third] == colours[third:2 * third] == colours[2 * third:3 * third]
        layout = tuple((tags.get(tag) or (default,))[0] for tag, default in LAYOUT_TAGS.items()) + (gray_map,)
        if first_layout is None:
            first_layout = layout
            samples = layout[4]
            if samples not in (1, 3, 4):  # ITK misreads gray + alpha TIFFs as gray
                raise InputError(f"{path}: {samples} samples per pixel, expected 1 (gray or palette), 3 (RGB) or "
                                 f"4 (RGBA) in a TIFF")
        elif layout[:2] != first_layout[:2]:
            raise InputError(f"{path}: page {page} is {layout[0]} x {layout[1]} px, page 1 {first_layout[0]} x "
                             f"{first_layout[1]} px: all pages must have one size")
        elif layout != first_layout:
            raise InputError(f"{path}: page {page} stores its pixels differently from page 1 (bits, channels, "
                             f"colour model or colour map): all pages must share one pixel format")
        pages += 1
    if first_layout is None:
        raise bad("no pages")
    _, _, bits, photometric, samples, planar, sample_format, _ = first_layout
    return Layout(pages, palette=photometric == 3,
                  rgb8=as_itk_reads and (bits, photometric, samples, planar, sample_format) == (8, 2, 3, 1, 1))


def _directory(data: mmap.mmap, offset: int, formats: tuple[str, str, int, str], bad) -> tuple[dict, int]:
    """The page directory at ``offset``: its READ_TAGS values and the next directory's offset, every entry's
    value and the page's image data checked to lie inside the file (else ``bad(problem)`` is raised).
    ``formats``: byte order, entry count format, entry size and offset format (classic TIFF or BigTIFF)."""
    end, count_fmt, entry_size, offset_fmt = formats
    size, count_size, value_size = len(data), struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
    if offset + count_size > size:
        raise bad("directory lies beyond the end of the file (truncated?)")
    n = struct.unpack_from(end + count_fmt, data, offset)[0]
    entries_end = offset + count_size + n * entry_size
    if entries_end + value_size > size:
        raise bad("directory runs past the end of the file (truncated?)")
    tags: dict[int, tuple[int, ...]] = {}
    for i in range(n):
        e = offset + count_size + i * entry_size
        tag, typ = struct.unpack_from(end + "HH", data, e)
        count = struct.unpack_from(end + offset_fmt, data, e + 4)[0]
        nbytes = count * _TIFF_TYPE_SIZES.get(typ, 1)
        where = e + 4 + value_size
        if nbytes > value_size:
            where = struct.unpack_from(end + offset_fmt, data, where)[0]
        if where + nbytes > size:
            raise bad(f"tag {tag} points beyond the end of the file (truncated?)")
        if typ in _TIFF_INT_FORMATS and tag in READ_TAGS:
            tags[tag] = struct.unpack_from(f"{end}{count}{_TIFF_INT_FORMATS[typ]}", data, where)
    for offsets_tag, counts_tag in DATA_BLOCKS:
        for start, length in zip(tags.get(offsets_tag, ()), tags.get(counts_tag, ())):
            if start + length > size:
                raise bad("image data lies beyond the end of the file (truncated?)")
    return tags, struct.unpack_from(end + offset_fmt, data, entries_end)[0]


# MetaImage header fields that hold NDims (power 1) or NDims x NDims (power 2) numbers
_MHA_ARRAYS = {"DimSize": 1, "Offset": 1, "Position": 1, "Origin": 1, "CenterOfRotation": 1, "ElementSpacing": 1,
               "ElementSize": 1, "TransformMatrix": 2, "Rotation": 2, "Orientation": 2}
_MHA_TYPES = {f"MET_{t}{a}" for t in ("CHAR", "UCHAR", "SHORT", "USHORT", "INT", "UINT", "LONG", "ULONG", "LONG_LONG",
                                      "ULONG_LONG", "FLOAT", "DOUBLE") for a in ("", "_ARRAY")}


def check_mha_header(path: Path) -> Layout:
    """Parse the MetaImage header strictly before ITK does (its parser crashes on some malformed headers):
    ``Key = Value`` lines of printable ASCII, each key once, NDims 2 or 3 before any array field, array
    fields of the right length, a known ElementType, 1 to 4 channels, and ``ElementDataFile = LOCAL`` (the
    pixels in this file: anything else would read other files). The page count is ITK's to check."""
    with path.open("rb") as f:
        head = f.read(65536)
    fields: dict[str, str] = {}

    def bad(problem: str) -> InputError:
        return InputError(f"{path}: not a MetaImage ({problem})")

    for raw in head.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        key, sep, value = (part.strip() for part in line.partition(b"="))
        if not sep or not re.fullmatch(rb"[A-Za-z][A-Za-z0-9_]*", key) or not value.isascii() \
                or not value.decode().isprintable():
            raise bad(f"malformed header line {line[:60]!r}")
        name, text = key.decode(), value.decode()
        if name in fields:
            raise bad(f"{name} given twice")
        if name in _MHA_ARRAYS and "NDims" not in fields:
            raise bad(f"{name} before NDims")
        if name == "NDims" and text not in ("2", "3"):
            raise InputError(f"{path}: {text[:20]}-D image, expected 2-D pages or a 3-D stack of pages")
        if name in _MHA_ARRAYS:
            numbers = text.split()
            if len(numbers) != int(fields["NDims"]) ** _MHA_ARRAYS[name] or not all(_is_number(v) for v in numbers):
                raise bad(f"{name} = {text[:60]!r} for NDims = {fields['NDims']}")
        fields[name] = text
        if name == "ElementDataFile":
            break
    else:
        raise bad("no ElementDataFile = LOCAL in the header")
    if fields["ElementDataFile"] != "LOCAL":
        raise InputError(f"{path}: MetaImage pixel data must be LOCAL, not {fields['ElementDataFile'][:80]!r}")
    if "DimSize" not in fields or any(not v.isdigit() for v in fields["DimSize"].split()):
        raise bad(f"DimSize = {fields.get('DimSize', '(missing)')[:60]!r}")
    if fields.get("ElementType") not in _MHA_TYPES:
        raise bad(f"ElementType = {fields.get('ElementType', '(missing)')[:30]!r}")
    if fields.get("ElementNumberOfChannels", "1") not in ("1", "2", "3", "4"):
        raise InputError(f"{path}: {fields['ElementNumberOfChannels'][:20]} channels per pixel, expected 1 to 4")
    return Layout(pages=None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
