"""The stack reader (runtime/stack.py): every input rule of its docstring, on files written here."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import GC_SAMPLE, GC_SAMPLE_2PAGES, ROOT, pil_pages, real_pages, save_stack, write_tiff

from runtime import stack
from runtime.stack import InputError, read_stack


def gray3(pages: np.ndarray) -> np.ndarray:
    return np.repeat(pages[..., :1], 3, axis=3)


# --- formats -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["s.tif", "s.tiff", "s.mha", "S.TIF", "S.MHA"])
def test_tiff_and_metaimage_round_trip_exactly(name, tmp_path):
    pages = real_pages(5)
    path = save_stack(tmp_path / name.lower(), pages).rename(tmp_path / name)
    np.testing.assert_array_equal(read_stack(path), pages)


def test_real_gc_encoded_pages_decode_as_pillow_decodes_them():
    """The first two pages of GC's own sample stack, byte for byte (deflate, DPI tags), against an independent
    TIFF reader (Pillow's libtiff), not against read_stack or SimpleITK."""
    pages = read_stack(GC_SAMPLE_2PAGES)
    assert pages.shape == (2, 128, 128, 3) and pages.dtype == np.uint8 and pages.std() > 10
    np.testing.assert_array_equal(pages, pil_pages(GC_SAMPLE_2PAGES))


@pytest.mark.skipif(not GC_SAMPLE.is_file(), reason="../shared/data/gc-sample not beside the repo")
def test_real_gc_sample_has_16_pages_that_decode_as_pillow_decodes_them():
    pages = read_stack(GC_SAMPLE)
    assert pages.shape == (16, 128, 128, 3)
    np.testing.assert_array_equal(pages, pil_pages(GC_SAMPLE))
    np.testing.assert_array_equal(pages[:2], read_stack(GC_SAMPLE_2PAGES))  # the fixture is its first 2 pages


def test_2d_image_is_one_page_and_40_pages_are_all_read(tmp_path):
    pages = real_pages(40)
    np.testing.assert_array_equal(read_stack(save_stack(tmp_path / "one.mha", pages[0][None])), pages[:1])
    sitk.WriteImage(sitk.GetImageFromArray(pages[0], isVector=True), str(tmp_path / "two_d.tif"))
    np.testing.assert_array_equal(read_stack(tmp_path / "two_d.tif"), pages[:1])
    np.testing.assert_array_equal(read_stack(save_stack(tmp_path / "forty.tif", pages)), pages)


# --- channels and depth ------------------------------------------------------------------------------------

def test_rgba_gray_and_16_bit_pages(tmp_path):
    pages = real_pages(3)
    alpha = np.full(pages.shape[:3] + (1,), 77, np.uint8)
    for name, data, expected in [
        ("rgba.tif", np.concatenate([pages, alpha], axis=3), pages),
        ("rgba.mha", np.concatenate([pages, alpha], axis=3), pages),
        ("gray.tif", pages[..., 1], gray3(pages[..., 1:2])),
        ("gray_alpha.mha", np.concatenate([pages[..., 1:2], alpha], axis=3), gray3(pages[..., 1:2])),
        ("gray16.tif", pages[..., 2].astype(np.uint16) * 257, gray3(pages[..., 2:3])),
        # +128: rounds down
        ("rgb16.mha", (pages.astype(np.uint16) * 257 + (pages < 255) * 128).astype(np.uint16), pages),
        ("int16.mha", pages.astype(np.int16) * 128 - 5000, None),
    ]:
        got = read_stack(save_stack(tmp_path / name, data))
        if expected is None:  # signed: negatives clipped to 0, then / 257
            expected = np.rint(np.clip(data.astype(float), 0, None) / 257).astype(np.uint8)
        np.testing.assert_array_equal(got, expected, err_msg=name)
    # the same through a hand-written TIFF (Pillow-like layout: ExtraSamples, one strip)
    np.testing.assert_array_equal(
        read_stack(write_tiff(tmp_path / "rgba_plain.tif", list(np.concatenate([pages, alpha], 3)))), pages)
    np.testing.assert_array_equal(
        read_stack(write_tiff(tmp_path / "rgb16_plain.tif", list(pages.astype(np.uint16) * 257))), pages)


@pytest.mark.parametrize("scale", [256, 257])
def test_palette_pages_go_through_their_colour_map_exactly(scale, tmp_path):
    rng = np.random.default_rng(scale)
    colours = rng.integers(0, 256, (3, 256))
    indices = [rng.integers(0, 256, (128, 128), dtype=np.uint8) for _ in range(3)]
    got = read_stack(write_tiff(tmp_path / "palette.tif", indices, colormap=colours * scale))
    np.testing.assert_array_equal(got, np.stack([colours.T[i] for i in indices]))


def test_float_pages_are_scaled_per_page(tmp_path):
    pages = real_pages(3).astype(np.float32)
    data = np.stack([pages[0] / 255, pages[1], np.where(pages[2] > 100, np.nan, pages[2] * 2)])
    got = read_stack(save_stack(tmp_path / "float.mha", data))
    np.testing.assert_array_equal(got[0], pages[0])  # [0, 1] -> x 255
    np.testing.assert_array_equal(got[1], pages[1])  # already 0..255
    np.testing.assert_array_equal(got[2], np.where(pages[2] > 100, 0, np.minimum(pages[2] * 2, 255)))


# --- page size ----------------------------------------------------------------------------------------------

def test_large_pages_are_centre_cropped_small_ones_edge_padded(tmp_path):
    pages = real_pages(2)
    big = np.pad(pages, ((0, 0), (11, 11), (4, 5), (0, 0)), constant_values=7)  # crop starts at row 11, col 4
    np.testing.assert_array_equal(read_stack(save_stack(tmp_path / "big.tif", big)), pages)
    np.testing.assert_array_equal(read_stack(save_stack(tmp_path / "big.mha", big)), pages)
    small = read_stack(save_stack(tmp_path / "small.tif", pages[:, :120, :127]))
    np.testing.assert_array_equal(small[:, 4:124, :127], pages[:, :120, :127])
    assert (small[:, :4] == small[:, 4:5]).all() and (small[:, :, 127] == small[:, :, 126]).all()
    tiny = read_stack(save_stack(tmp_path / "tiny.tif", pages[:, :1, :1]))
    assert (tiny == pages[:, :1, :1]).all()


def test_large_metaimage_is_streamed_in_chunks_with_the_same_result(tmp_path, monkeypatch):
    pages = np.pad(real_pages(9), ((0, 0), (3, 2), (6, 0), (0, 0)), mode="reflect")
    path = save_stack(tmp_path / "stream.mha", pages)
    whole = read_stack(path)
    monkeypatch.setattr(stack, "CHUNK_BYTES", 2 * pages[0].nbytes)  # 2 pages per read
    calls = []
    execute = sitk.ImageFileReader.Execute
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", lambda self: calls.append(1) or execute(self))
    np.testing.assert_array_equal(read_stack(path), whole)
    assert len(calls) == 5


# --- unusable files ------------------------------------------------------------------------------------

def refused(path, *words: str) -> str:
    with pytest.raises(InputError) as info:
        read_stack(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def test_truncated_tiffs_are_refused_never_read_short(tmp_path):
    data = GC_SAMPLE_2PAGES.read_bytes()
    for cut in (9, 1000, 46000, 46700, 46860, 50000, len(data) // 2, len(data) - 100, len(data) - 1):
        (tmp_path / "cut.tiff").write_bytes(data[:cut])
        refused(tmp_path / "cut.tiff", "not a readable TIFF")
    written = save_stack(tmp_path / "w.tif", real_pages(4)).read_bytes()
    for cut in range(100, len(written), len(written) // 7):
        (tmp_path / "cut.tif").write_bytes(written[:cut])
        refused(tmp_path / "cut.tif")


def test_truncated_metaimage_is_refused(tmp_path):
    for compressed in (False, True):
        path = tmp_path / "full.mha"
        sitk.WriteImage(sitk.GetImageFromArray(real_pages(4), isVector=True), str(path), useCompression=compressed)
        data = path.read_bytes()
        (tmp_path / "cut.mha").write_bytes(data[: len(data) - 1000])
        refused(tmp_path / "cut.mha", "cannot read the pixel data")


def test_unusable_files_are_refused(tmp_path):
    pages = real_pages(2)
    (tmp_path / "empty.tif").write_bytes(b"")
    refused(tmp_path / "empty.tif", "empty file")
    (tmp_path / "garbage.tif").write_bytes(os.urandom(3000))
    refused(tmp_path / "garbage.tif", "not a readable TIFF")
    (tmp_path / "garbage.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n" + os.urandom(500))
    refused(tmp_path / "garbage.mha", "not a MetaImage")
    save_stack(tmp_path / "png_inside.png", pages[:1])
    os.rename(tmp_path / "png_inside.png", tmp_path / "png_inside.tif")
    refused(tmp_path / "png_inside.tif", "not a readable TIFF")
    refused(tmp_path / "missing.tif", "not a file")
    header = "ObjectType = Image\nNDims = {n}\nDimSize = {size}\nElementNumberOfChannels = {c}\nElementType = {t}\n"
    for name, fields, words in [
        ("zero.mha", dict(n=3, size="128 128 0", c=3, t="MET_UCHAR"), ["no pages"]),
        ("huge.mha", dict(n=3, size="100000 100000 1000", c=3, t="MET_UCHAR"), ["GiB decoded"]),
        ("four_d.mha", dict(n=4, size="8 8 2 2", c=3, t="MET_UCHAR"), ["4-D image"]),
        ("five.mha", dict(n=3, size="8 8 2", c=5, t="MET_UCHAR"), ["5 channels"]),
    ]:
        (tmp_path / name).write_text(header.format(**fields) + "ElementDataFile = LOCAL\n")
        refused(tmp_path / name, *words)
    (tmp_path / "elsewhere.mha").write_text(header.format(n=2, size="128 128", c=1, t="MET_UCHAR")
                                            + "ElementDataFile = /etc/hostname\n")
    refused(tmp_path / "elsewhere.mha", "must be LOCAL")


def test_tiff_structure_problems_are_refused(tmp_path):
    pages = real_pages(2)
    refused(write_tiff(tmp_path / "mixed.tif", [pages[0], pages[1][:64, :100]]), "page 2 is 100 x 64 px")
    refused(write_tiff(tmp_path / "gray_alpha.tif", [np.dstack([p[..., 0], p[..., 1]]) for p in pages]),
            "2 samples per pixel")
    # pages whose pixel format differs from page 1's: ITK would misread them, or (gray then colour
    # palette) overflow its buffer and crash
    gray_map, colour_map = np.tile(np.arange(256) * 257, (3, 1)), np.random.default_rng(0).integers(0, 65536, (3, 256))
    for name, written in [("gray_then_rgb", [pages[0][..., 0], pages[1]]),
                          ("rgb_then_gray", [pages[0], pages[1][..., 0]]),
                          ("8_then_16_bit", [pages[0], pages[1].astype(np.uint16)])]:
        refused(write_tiff(tmp_path / f"{name}.tif", written), "page 2 stores its pixels differently")
    refused(write_tiff(tmp_path / "colour_then_gray.tif", list(pages[..., 0]), colormap=[colour_map, gray_map]),
            "page 2 stores its pixels")
    crasher = write_tiff(tmp_path / "gray_then_colour.tif", list(pages[..., 0]), colormap=[gray_map, colour_map])
    assert "page 2 stores its pixels" in read_in_child(crasher)
    two_colour_maps = [colour_map, colour_map[::-1]]  # each page through its own map
    got = read_stack(write_tiff(tmp_path / "two_maps.tif", list(pages[..., 0]), colormap=two_colour_maps))
    np.testing.assert_array_equal(got, np.stack([(m.T[p[..., 0]] >> 8) for m, p in zip(two_colour_maps, pages)]))
    data = bytearray(write_tiff(tmp_path / "ok.tif", list(pages)).read_bytes())
    first = int.from_bytes(data[4:8], "little")
    looped = bytearray(data)
    entries = int.from_bytes(data[first:first + 2], "little")
    looped[first + 2 + 12 * entries:first + 6 + 12 * entries] = first.to_bytes(4, "little")
    (tmp_path / "loop.tif").write_bytes(bytes(looped))
    refused(tmp_path / "loop.tif", "loop")


MHA_HEADER = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nCompressedData = False\n"
              "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 1\nDimSize = 8 8 2\n"
              "ElementNumberOfChannels = 3\nElementType = MET_UCHAR\n")


def read_in_child(path) -> str:
    """read_stack in a fresh interpreter, for files that crashed ITK before the header checks: a crash
    fails the test instead of killing pytest. Returns the InputError message."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from runtime.stack import InputError, read_stack\n"
            "try:\n    read_stack(sys.argv[2])\nexcept InputError as exc:\n    print(exc)")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and str(path) in proc.stdout, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    return proc.stdout


@pytest.mark.parametrize("edit, words", [
    (("NDims = 3", "NDims = 99"), ["99-D image"]),  # these three crashed ITK's MetaImage reader
    (("NDims = 3", "NDims = -1"), ["-1-D image"]),
    (("NDims = 3\nBinaryData", "NDims\0\0\0\0 = 3\nBinaryData"), ["malformed header line"]),
    (("ObjectType = Image\nNDims = 3\n", "ObjectType = Image\n"), ["TransformMatrix before NDims"]),
    (("DimSize = 8 8 2", "DimSize = 8 8"), ["DimSize = '8 8' for NDims = 3"]),
    (("DimSize = 8 8 2", "DimSize = 8 -8 2"), ["DimSize"]),
    (("Offset = 0 0 0", "Offset = 0 0 zero"), ["Offset"]),
    (("MET_UCHAR", "MET_BOGUS"), ["ElementType"]),
    (("ElementNumberOfChannels = 3", "ElementNumberOfChannels = 0"), ["0 channels"]),
    (("BinaryData = True", "BinaryData = True\nBinaryData = True"), ["BinaryData given twice"]),
])
def test_malformed_metaimage_headers_are_refused_before_itk_parses_them(edit, words, tmp_path):
    path = tmp_path / "stack.mha"
    path.write_bytes(MHA_HEADER.replace(*edit).encode() + b"ElementDataFile = LOCAL\n" + bytes(8 * 8 * 2 * 3))
    message = read_in_child(path)
    for word in words:
        assert word in message, message


# --- TIFF variants: byte order, BigTIFF, tiles -------------------------------------------------------------

def first_directory(data: bytes) -> tuple[str, dict[int, tuple[int, int, int]]]:
    """Page 1's tags of a TIFF or BigTIFF, parsed here independently of runtime/stack.py: (byte order,
    {tag: (type, count, where its values lie)})."""
    end = "<" if data[:2] == b"II" else ">"
    big = struct.unpack_from(end + "H", data, 2)[0] == 43
    count_fmt, offset_fmt = ("Q", "Q") if big else ("H", "I")
    count_size, value_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
    offset = struct.unpack_from(end + offset_fmt, data, 8 if big else 4)[0]
    tags = {}
    for i in range(struct.unpack_from(end + count_fmt, data, offset)[0]):
        entry = offset + count_size + i * (4 + 2 * value_size)
        tag, typ = struct.unpack_from(end + "HH", data, entry)
        count = struct.unpack_from(end + offset_fmt, data, entry + 4)[0]
        where = entry + 4 + value_size
        if count * {3: 2, 4: 4, 16: 8}[typ] > value_size:
            where = struct.unpack_from(end + offset_fmt, data, where)[0]
        tags[tag] = (typ, count, where)
    return end, tags


VARIANTS = {
    "big-endian": dict(byteorder=">"),
    "BigTIFF": dict(bigtiff=True),
    "big-endian BigTIFF": dict(byteorder=">", bigtiff=True),
    "tiled": dict(tile=48),
    "tiled big-endian BigTIFF": dict(tile=64, byteorder=">", bigtiff=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_big_endian_bigtiff_and_tiled_files_are_read_exactly_and_walked_alike(variant, tmp_path):
    options = VARIANTS[variant]
    pages = real_pages(3)
    rgb16 = np.random.default_rng(1).integers(0, 65536, pages.shape).astype(np.uint16)  # byte order matters
    np.testing.assert_array_equal(read_stack(write_tiff(tmp_path / "rgb.tif", list(pages), **options)), pages)
    np.testing.assert_array_equal(read_stack(write_tiff(tmp_path / "rgb16.tif", list(rgb16), **options)),
                                  ((rgb16.astype(np.uint32) + 128) // 257).astype(np.uint8))
    np.testing.assert_array_equal(read_stack(write_tiff(tmp_path / "gray.tif", list(pages[..., 1]), **options)),
                                  gray3(pages[..., 1:2]))
    # the page directory walk understands the variant: a later page of another size or format is refused
    refused(write_tiff(tmp_path / "mixed.tif", [pages[0], pages[1][:64, :100]], **options), "page 2 is 100 x 64 px")
    refused(write_tiff(tmp_path / "formats.tif", [pages[0], pages[1][..., 0]], **options),
            "page 2 stores its pixels differently")
    # a cut file is refused wherever it is cut
    data = (tmp_path / "rgb.tif").read_bytes()
    for cut in range(7, len(data), len(data) // 9):
        (tmp_path / "cut.tif").write_bytes(data[:cut])
        refused(tmp_path / "cut.tif", "not a readable TIFF")
    # image data (a strip or a tile) that lies beyond the end of the file is refused
    end, tags = first_directory(data)
    typ, count, where = tags[324 if options.get("tile") else 273]
    assert count == (9 if options.get("tile") == 48 else 4 if options.get("tile") else 1)
    moved = bytearray(data)
    struct.pack_into(end + {4: "I", 16: "Q"}[typ], moved, where + (count - 1) * struct.calcsize({4: "I", 16: "Q"}[typ]),
                     len(data) - 100)
    (tmp_path / "beyond.tif").write_bytes(bytes(moved))
    refused(tmp_path / "beyond.tif", "page 1 image data lies beyond the end of the file")


def test_tiled_16_bit_gray_goes_through_itks_8_bit_fallback_within_one_of_the_rule(tmp_path):
    """ITK reads tiled 16-bit gray TIFFs through libtiff's 8-bit RGBA reader (value >> 8), not round(value / 257):
    documented in runtime/stack.py; never more than 1 apart."""
    gray16 = np.random.default_rng(2).integers(0, 65536, (2, 128, 128)).astype(np.uint16)
    got = read_stack(write_tiff(tmp_path / "tiled16.tif", list(gray16), tile=64)).astype(int)
    rule = (gray16.astype(np.uint32) + 128) // 257
    assert np.abs(got - gray3(rule[..., None])).max() <= 1
    np.testing.assert_array_equal(got, gray3((gray16 >> 8)[..., None]))


def test_stacks_itk_sees_differently_are_refused(tmp_path):
    pages = real_pages(3)
    # every page a reduced-resolution image (NewSubfileType 1): ITK reads 1 page of the 3 directories
    refused(write_tiff(tmp_path / "subfiles.tif", list(pages), extra_tags=[(254, 4, [1])]),
            "3 page directories but 1 pages readable")
    refused(write_tiff(tmp_path / "float64.tif", list(pages.astype(np.float64))), "not a readable TIFF",
            "64-bit samples")
    # a header too short for its first offset, and no page directory at all
    (tmp_path / "short.tif").write_bytes(b"II*\x00\x08\x00")
    refused(tmp_path / "short.tif", "not a readable TIFF")
    for name, header in [("none.tif", b"II*\x00" + bytes(4)), ("none_big.tif", b"MM\x00+\x00\x08\x00\x00" + bytes(8))]:
        (tmp_path / name).write_bytes(header + bytes(64))
        refused(tmp_path / name, "not a readable TIFF (no pages)")
    (tmp_path / "version.tif").write_bytes(b"II\x2c\x00" + bytes(64))
    refused(tmp_path / "version.tif", "not a readable TIFF (unknown version 44)")


def test_pixel_types_and_shapes_the_header_checks_let_through_are_refused_by_itks_view(tmp_path, monkeypatch):
    pages = real_pages(2)
    path = save_stack(tmp_path / "stack.mha", pages)
    with monkeypatch.context() as patch:  # a pixel type outside the supported integers and floats
        patch.setattr(sitk.ImageFileReader, "GetPixelID", lambda self: sitk.sitkComplexFloat32)
        refused(path, "unsupported pixel type (complex of 32-bit float)")
    # the same limits are checked again on what ITK reports, should the header checks ever let one through
    monkeypatch.setattr(stack, "check_mha_header", lambda path: stack.Layout(pages=None))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 8, 8, 3), np.uint8), isVector=True),
                    str(tmp_path / "four_d.mha"))
    refused(tmp_path / "four_d.mha", "4-D image")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 8, 8, 5), np.uint8), isVector=True), str(tmp_path / "five.mha"))
    refused(tmp_path / "five.mha", "5 channels per pixel")


def test_wide_integer_and_double_pages_are_clipped(tmp_path):
    values = np.array([-70000, -1, 0, 7, 255, 256, 70000], np.int64).reshape(1, 1, 7).repeat(128, 1)
    values = np.pad(values, ((0, 0), (0, 0), (0, 121)), mode="edge")
    expected = gray3(np.clip(values, 0, 255).astype(np.uint8)[..., None])
    for dtype in (np.int32, np.int64, np.float64):
        np.testing.assert_array_equal(read_stack(save_stack(tmp_path / "wide.mha", values.astype(dtype))), expected,
                                      err_msg=np.dtype(dtype).name)
    unsigned = save_stack(tmp_path / "u32.mha", np.clip(values, 0, None).astype(np.uint32))
    np.testing.assert_array_equal(read_stack(unsigned), expected)


def test_fit_size_and_itk_messages():
    pages = np.arange(2 * 5 * 4 * 3, dtype=np.uint8).reshape(2, 5, 4, 3)
    np.testing.assert_array_equal(stack.fit_size(pages, 3), pages[:, 1:4, 0:3])  # centre crop, rounded down
    assert stack._itk_message(RuntimeError("no ITK line here")) == "RuntimeError"
    assert stack._itk_message(RuntimeError("x\nsitk::ERROR: Unable to open it\n")) == "Unable to open it"


# --- 8-bit RGB TIFFs: tifffile's fast read ----------------------------------------------------------------

def simpleitk_only(path, size=128):
    """read_stack as SimpleITK reads the file, the tifffile path switched off."""
    fast = stack._read_rgb8_tiff
    stack._read_rgb8_tiff = lambda path, size: None
    try:
        return read_stack(path, size)
    finally:
        stack._read_rgb8_tiff = fast


RGB8_TIFFS = {  # name: tifffile.imwrite options; pages 100 x 150 px (cropped along one axis, padded along the other)
    "plain": {}, "deflate": {"compression": "zlib"}, "deflate-predictor": {"compression": "zlib", "predictor": True},
    "big-endian": {"byteorder": ">"}, "bigtiff": {"bigtiff": True}, "tiled": {"tile": (64, 64)},
    "strips-of-7-rows": {"rowsperstrip": 7}, "one-page": {},
}


@pytest.mark.parametrize("name", RGB8_TIFFS)
def test_rgb8_tiffs_are_read_by_tifffile_as_simpleitk_reads_them(name, tmp_path):
    """Every 8-bit RGB TIFF layout tifffile decodes without extra codecs: the same pages as SimpleITK's, read
    without loading SimpleITK (a fresh process: the cold start's reader)."""
    tifffile = pytest.importorskip("tifffile")
    pages = np.random.default_rng(5).integers(0, 256, (1 if name == "one-page" else 5, 100, 150, 3), np.uint8)
    path = tmp_path / f"{name}.tif"
    tifffile.imwrite(path, pages, photometric="rgb", **RGB8_TIFFS[name])
    assert stack.check_tiff(path).rgb8
    for size in (128, None):
        np.testing.assert_array_equal(read_stack(path, size), simpleitk_only(path, size))
    np.testing.assert_array_equal(read_stack(path, None), pages)
    script = ("import sys; from runtime.stack import read_stack; read_stack(sys.argv[1]); "
              "assert 'SimpleITK' not in sys.modules")
    subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT, check=True)


def test_rgb8_tiffs_tifffile_cannot_read_as_simpleitk_does_go_to_simpleitk(tmp_path):
    """LZW (tifffile needs imagecodecs for it), a page marked as a reduced image or a mask (ITK does not count
    it; a page of a multi-page file it does), a rotated orientation and a corrupt deflate strip: read, or
    refused, exactly as SimpleITK alone does."""
    tifffile = pytest.importorskip("tifffile")
    pages = real_pages(3)
    lzw = tmp_path / "lzw.tif"
    sitk.WriteImage(sitk.GetImageFromArray(pages, isVector=True), str(lzw), useCompression=True, compressor="LZW")
    rotated = tmp_path / "rotated.tif"
    tifffile.imwrite(rotated, pages, photometric="rgb", extratags=[(274, "H", 1, 3, True)])
    assert stack.check_tiff(lzw).rgb8 and stack._read_rgb8_tiff(lzw, 128) is None  # tifffile tries, and gives up
    assert not stack.check_tiff(rotated).rgb8  # the walk keeps tifffile away
    for path in (lzw, rotated):
        np.testing.assert_array_equal(read_stack(path), simpleitk_only(path))
    for kind in (1, 4):  # a reduced image, a mask
        marked = write_tiff(tmp_path / f"subfiles-{kind}.tif", list(pages), extra_tags=[(254, 4, [kind])])
        assert not stack.check_tiff(marked).rgb8
    pages_of_many = write_tiff(tmp_path / "pages.tif", list(pages), extra_tags=[(254, 4, [2])])
    assert stack.check_tiff(pages_of_many).rgb8
    np.testing.assert_array_equal(stack._read_rgb8_tiff(pages_of_many, 128), simpleitk_only(pages_of_many))
    corrupt = tmp_path / "corrupt.tif"
    tifffile.imwrite(corrupt, pages, photometric="rgb", compression="zlib")
    data = bytearray(corrupt.read_bytes())
    with tifffile.TiffFile(corrupt) as tif:
        strip = tif.pages.first.dataoffsets[0]
    data[strip + 10:strip + 60] = bytes(50)
    corrupt.write_bytes(bytes(data))
    assert stack._read_rgb8_tiff(corrupt, 128) is None
    refused(corrupt, "cannot read the pixel data")


def test_tifffile_warnings_stay_off_stderr(tmp_path):
    """A stack whose Exif pointer leads past the end of the file: tifffile logs a warning and reads the pages.
    In a fresh process (no logging set up, where Python would print it) stderr stays empty, and the pages are
    SimpleITK's."""
    pages = real_pages(2)
    path = write_tiff(tmp_path / "exif.tif", list(pages), extra_tags=[(34665, 4, [999_999])])
    script = ("import sys, numpy as np; from runtime.stack import read_stack; "
              "np.save(sys.argv[2], read_stack(sys.argv[1])); assert 'SimpleITK' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "pages.npy")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "pages.npy"), simpleitk_only(path))
