"""Training reads a patch file as inference does: the same array from ``training.data`` as from ``amf predict``'s
reader (runtime/stack.py's rules), for every image kind the runtime accepts, and the rules themselves (16-bit
scaled, palettes through their colour map, alpha dropped, gray replicated, odd sizes fitted)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import real_pages, save_stack, write_tiff
from PIL import Image

from runtime import predict
from training.data import DataSource, ManifestError, load


def gray3(page: np.ndarray) -> np.ndarray:
    return np.repeat(page[..., None], 3, axis=2)


def kinds(tmp_path) -> dict[str, tuple[object, np.ndarray | None]]:
    """name -> (a writer of the file, the array the runtime's rules give; None: as the runtime reads it, e.g. JPEG)."""
    rgb = real_pages(3)
    page, other, gray = rgb[0], rgb[1], rgb[2][..., 1]
    alpha = np.full(page.shape[:2] + (1,), 77, np.uint8)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, page.shape[:2], dtype=np.uint8)
    wide = np.pad(page, ((10, 10), (0, 0), (0, 0)), mode="edge")[:, 20:120]  # 148 x 100: cropped and padded

    def pil(mode_array, **save):
        return lambda path: Image.fromarray(mode_array).save(path, **save)

    def palette(path):
        image = Image.fromarray(indices, "P")
        image.putpalette(colours.ravel().tolist())
        image.save(path)

    def itk(array, vector):
        return lambda path: sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))

    gray16 = (gray.astype(np.uint16) * 257 + (gray < 255) * 100).astype(np.uint16)  # +100: rounds to the same byte
    rgb16 = (page.astype(np.uint16) * 257 + (page < 255) * 128).astype(np.uint16)  # +128: rounds down
    return {
        "gray8.png": (pil(gray), gray3(gray)),
        "gray16.png": (pil(gray16), gray3(gray)),
        "rgb8.png": (pil(page), page),
        "rgb16.png": (itk(rgb16, True), page),
        "rgba8.png": (pil(np.concatenate([page, alpha], 2)), page),
        "rgba16.png": (itk(np.concatenate([rgb16, alpha.astype(np.uint16) * 257], 2), True), page),
        "palette.png": (palette, colours[indices]),
        "bilevel.png": (lambda path: Image.fromarray(gray > 128).save(path), gray3(np.where(gray > 128, 255, 0))),
        "odd_size.png": (pil(wide), np.pad(wide[10:138], ((0, 0), (14, 14), (0, 0)), mode="edge")),
        "rgb.jpg": (pil(page, quality=95), None),
        "gray.jpeg": (pil(gray, quality=95), None),
        "rgb.bmp": (pil(page), page),
        "palette.bmp": (palette, colours[indices]),
        "rgb.tif": (lambda path: save_stack(path, page[None]), page),
        "gray16.tiff": (lambda path: save_stack(path, gray16[None]), gray3(gray)),
        "rgba.tif": (lambda path: save_stack(path, np.concatenate([page, alpha], 2)[None]), page),
        "palette.tif": (lambda path: write_tiff(path, [indices], colormap=colours.T.astype(np.uint16) * 257),
                        colours[indices]),
        "rgb16.tif": (lambda path: write_tiff(path, [rgb16]), page),
        "rgb.mha": (lambda path: save_stack(path, other[None]), other),
        "float.mha": (lambda path: save_stack(path, (other / 255).astype(np.float32)[None]), other),
        "gray_alpha.mha": (lambda path: save_stack(path, np.concatenate([gray[..., None], alpha], 2)[None]),
                           gray3(gray)),
    }


def test_training_reads_every_image_kind_as_inference_does(tmp_path):
    root = tmp_path / "set"
    (root / "atypical").mkdir(parents=True)
    expected = {}
    for name, (write, pixels) in kinds(tmp_path).items():
        write(root / "atypical" / name)
        expected[name] = pixels
    data = load([DataSource(root, "folders")])
    assert sorted(map(lambda p: p.rsplit("/", 1)[-1], data.paths)) == sorted(expected)
    for path, image in zip(data.paths, data.images):
        name = path.rsplit("/", 1)[-1]
        inference = np.stack([page for _, _, page in predict.pages_of([root / "atypical" / name])])
        assert inference.shape == (1, 128, 128, 3), name
        np.testing.assert_array_equal(image, inference[0], err_msg=f"{name}: training and inference differ")
        if expected[name] is not None:
            np.testing.assert_array_equal(image, expected[name], err_msg=f"{name}: not the runtime's rule")
    assert data.resized.tolist() == [p.endswith("odd_size.png") for p in data.paths]


def test_a_stack_of_several_pages_is_not_one_patch(tmp_path):
    manifest = tmp_path / "m.csv"
    save_stack(tmp_path / "two.tif", real_pages(2))
    manifest.write_text("file,label,domain,split,votes_atypical,slide,x,y\ntwo.tif,atypical,d,train,3,s,1,2\n")
    with pytest.raises(ManifestError, match=r"line 2: .*two.tif: 2 pages, expected one patch"):
        load([DataSource(manifest)])


def test_a_gray_and_alpha_png_is_refused_by_training_as_by_inference(tmp_path):
    """ITK cannot decode 2-channel PNGs: the runtime refuses them (as gray + alpha TIFFs), and training with it."""
    (tmp_path / "set" / "normal").mkdir(parents=True)
    path = tmp_path / "set" / "normal" / "la.png"
    Image.fromarray(np.stack([real_pages(1)[0, ..., 1], np.full((128, 128), 77, np.uint8)], 2), "LA").save(path)
    with pytest.raises(predict.InputError) as inference:
        list(predict.pages_of([path]))
    with pytest.raises(ManifestError) as training:
        load([DataSource(tmp_path / "set", "folders")])
    assert str(inference.value) in str(training.value)
