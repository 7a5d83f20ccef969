"""Shared fixtures for the tests (runtime/ and training/) (numpy, SimpleITK, onnx, onnxruntime only; no torch;
Pillow only inside :func:`pil_pages`, which skips without it): a tiny ONNX ensemble in the export format,
GC-layout inputs, stack writers, and the AMi-Br fixture's patches (``training.data`` imported inside the fixture)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import SimpleITK as sitk
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOCKET = "stacked-histopathology-roi-cropouts"
AMIBR_FIXTURE = HERE / "fixtures" / "amibr"  # 16 AMi-Br patches and their manifest
MULTI_FIXTURE = HERE / "fixtures" / "multi"  # three datasets sharing planted figures (make_multi_fixture.py)
OTHER_COLUMNS = "path=image,label=class,domain=tumor"  # --columns of MULTI_FIXTURE/other/other.csv
GC_SAMPLE = ROOT.parent / "shared" / "data" / "gc-sample" / "stack_5.tiff"  # optional, beside the repo
GC_SAMPLE_2PAGES = HERE / "fixtures" / "gc_sample_2pages.tiff"  # committed: test/fixtures/make_gc_sample_fixture.py



@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """Ensembles run on the CPU in every test, GPU or not (the golden answers were made there), unless a test
    sets AMF_DEVICE itself."""
    monkeypatch.setenv("AMF_DEVICE", "cpu")



class StandInOrt:
    """A stand-in onnxruntime module whose InferenceSession comes up as a CUDA build on a GPU machine would:
    on ``comes_up_on`` when CUDA is asked for, or raising ``fails_with``. It builds a real CPU session where the
    graph exists (so that it answers: the CUDA runner's stand-in), else one that only names its input, output
    and providers. ``calls``: the providers of each session asked for."""

    CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"

    def __init__(self, fails_with: Exception | None = None, comes_up_on: str = CUDA) -> None:
        import onnxruntime

        self.fails_with, self.comes_up_on, self.calls, self.preloaded = fails_with, comes_up_on, [], False
        self._ort = ort = onnxruntime
        self.SessionOptions, self.GraphOptimizationLevel = ort.SessionOptions, ort.GraphOptimizationLevel

    def preload_dlls(self) -> None:
        self.preloaded = True

    def InferenceSession(self, path, options, providers, enable_fallback=1):  # noqa: N802 - onnxruntime's name
        self.calls.append(providers)
        if providers[0] != self.CPU and self.fails_with is not None:
            raise self.fails_with
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        on = self.comes_up_on if first == self.CUDA else self.CPU
        if Path(path).is_file():
            real = self._ort.InferenceSession(path, options, providers=[self.CPU])
            return SimpleNamespace(get_providers=lambda: [on, self.CPU], get_inputs=real.get_inputs,
                                   get_outputs=real.get_outputs, run=real.run)
        names = [SimpleNamespace(name="image")], [SimpleNamespace(name="prob")]
        return SimpleNamespace(get_providers=lambda: [on, self.CPU], get_inputs=lambda: names[0],
                               get_outputs=lambda: names[1])


CHANNEL_WEIGHTS = (3.0, 2.0, 1.0)  # R, G, B: reversing the channels changes the answer


def tiny_weight_map(height: int, width: int) -> np.ndarray:
    """The tiny model's pixel weights, float64 [height, width, 3], summing to 1: a weight per channel times a
    ramp rising down the rows (1 -> 4) and a shallower one falling along the columns (2 -> 1), so that swapping
    channels or any of the 7 other orientations of a page (flips, transposes, rotations) changes its weighted
    mean (a uniform page keeps its value)."""
    rows = 1 + 3 * np.arange(height) / max(height - 1, 1)
    cols = 2 - np.arange(width) / max(width - 1, 1)
    weights = rows[:, None, None] * cols[None, :, None] * np.asarray(CHANNEL_WEIGHTS)[None, None, :]
    return weights / weights.sum()


def make_tiny_ensemble(folder: Path, offsets=(0.0, 0.2, -0.2, 0.4), tta: str = "none", corner: int | None = None,
                       thresholds=None, cpu_graphs: bool = False, vote: str | None = "majority",
                       groups=None, fails_at: int | None = None) -> Path:
    """ONNX model with the shipped interface: uint8 'image' [N,128,128,3] -> 'prob'/'logit' [N,F], where
    logit = (weighted mean intensity - 128) / 16 + offset per fold, the weights :func:`tiny_weight_map`'s
    (channel- and position-sensitive), computed in float64 so that :func:`tiny_model_probs` is its exact twin
    (NaN offsets give non-finite outputs). With ``corner`` the weighted mean is over the top-left corner x corner
    pixels only. ``thresholds``: the spec's per-fold thresholds (default 0.5 each). ``cpu_graphs``: one graph
    per fold beside it (output [N, 1]), listed as the spec's ``cpu_model_files``. ``vote``: the spec's rule
    (None: no ``vote`` field, as in old specs); ``groups``: each column's fold (``group``), when given.
    ``fails_at``: the first member's CPU graph fails (onnxruntime raises: a Gather out of range) on any batch with
    a pixel of at least this value, and answers as the others do on any other batch."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_graph(offsets, corner), str(folder / "ensemble.onnx"))
    cpu_files = [f"ensemble.cpu.{i}.onnx" for i in range(len(offsets))] if cpu_graphs else []
    for i, (name, offset) in enumerate(zip(cpu_files, offsets)):
        onnx.save(tiny_graph((offset,), corner, fails_at if i == 0 else None), str(folder / name))
    thresholds = [0.5] * len(offsets) if thresholds is None else thresholds
    groups = [None] * len(offsets) if groups is None else groups
    (folder / "ensemble.json").write_text(json.dumps({
        "format": "amf-mtl-ensemble", "version": 1, "model_file": "ensemble.onnx", "input_name": "image",
        "output_name": "prob", "patch_size": 128, **({"vote": vote} if vote else {}), "tie": "mean-probability",
        "confidence": "mean-probability", "tta": tta, **({"cpu_model_files": cpu_files} if cpu_files else {}),
        "folds": [{"name": f"fold{i}", "threshold": t, **({"group": g} if g else {})}
                  for i, (t, g) in enumerate(zip(thresholds, groups))]}))
    return folder


def tiny_graph(offsets, corner: int | None, fails_at: int | None = None) -> onnx.ModelProto:
    """make_tiny_ensemble's model, one output column per offset; ``fails_at``: see make_tiny_ensemble."""
    size = corner or 128
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.DOUBLE)]
    inits = [numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(tiny_weight_map(size, size)[None], "weights"),
             numpy_helper.from_array(np.array(128.0), "centre"),
             numpy_helper.from_array(np.array(16.0), "scale"),
             numpy_helper.from_array(np.array([offsets], np.float64), "offsets")]
    if corner:
        nodes.append(helper.make_node("Slice", ["x", "starts", "ends", "slice_axes"], ["xc"]))
        inits += [numpy_helper.from_array(np.array([0, 0], np.int64), "starts"),
                  numpy_helper.from_array(np.array([corner, corner], np.int64), "ends"),
                  numpy_helper.from_array(np.array([1, 2], np.int64), "slice_axes")]
    nodes += [
        helper.make_node("Mul", ["xc" if corner else "x", "weights"], ["xw"]),
        helper.make_node("ReduceSum", ["xw", "axes"], ["m"], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
        helper.make_node("Sub", ["m1", "centre"], ["c"]),
        helper.make_node("Div", ["c", "scale"], ["z"]),
        helper.make_node("Add", ["z", "offsets"], ["logit64"] if fails_at is None else ["logit_ok"]),
    ]
    if fails_at is not None:  # + table[brightest pixel]: a zero, or an out-of-range Gather from fails_at on
        inits.append(numpy_helper.from_array(np.zeros(fails_at), "table"))
        nodes += [helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0),
                  helper.make_node("Cast", ["peak"], ["index"], to=TensorProto.INT64),
                  helper.make_node("Gather", ["table", "index"], ["nothing"]),
                  helper.make_node("Add", ["logit_ok", "nothing"], ["logit64"])]
    nodes += [
        helper.make_node("Sigmoid", ["logit64"], ["prob64"]),
        helper.make_node("Cast", ["logit64"], ["logit"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["prob64"], ["prob"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 128, 128, 3])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", len(offsets)]),
                               helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", len(offsets)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def tiny_conv_graph(seed: int = 0, channels: int = 8) -> onnx.ModelProto:
    """A float graph with the ensemble's interface and layout: uint8 [N,128,128,3] -> Conv 3x3 (3 -> ``channels``,
    stride 4) -> Relu -> global mean -> one Gemm (``channels`` -> 1) per "fold" -> Concat: logit [N, 2], prob."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), "conv_b"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "scale")]
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "scale"], ["x01"]),
             helper.make_node("Transpose", ["x01"], ["x"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], strides=[4, 4], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["v"])]
    for fold, bias in enumerate((0.1, -0.2)):
        inits += [numpy_helper.from_array(rng.normal(0, 1.0, (1, channels)).astype(np.float32), f"fc{fold}_w"),
                  numpy_helper.from_array(np.array([bias], np.float32), f"fc{fold}_b")]
        nodes.append(helper.make_node("Gemm", ["v", f"fc{fold}_w", f"fc{fold}_b"], [f"logit{fold}"], transB=1))
    nodes += [helper.make_node("Concat", ["logit0", "logit1"], ["logit"], axis=1),
              helper.make_node("Sigmoid", ["logit"], ["prob"])]
    graph = helper.make_graph(nodes, "tiny-conv",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 128, 128, 3])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 2]),
                               helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def tiny_model_probs(pages: np.ndarray, offsets=(0.0, 0.2, -0.2, 0.4), corner: int | None = None) -> np.ndarray:
    """What make_tiny_ensemble's model computes, in numpy: float64 [N, F] (float32 in the model's output)."""
    region = pages[:, :corner, :corner] if corner else pages
    mean = (region.astype(np.float64) * tiny_weight_map(*region.shape[1:3])[None]).sum(axis=(1, 2, 3))
    return 1 / (1 + np.exp(-((mean[:, None] - 128) / 16 + np.asarray(offsets)[None])))


def d4_views(pages: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(v, k, axes=(1, 2)) for v in (pages, pages[:, :, ::-1]) for k in range(4)]


def write_inputs(root: Path, image_name: str | None = "stack.tif", slug: str = SOCKET,
                 relative_path: str = f"images/{SOCKET}") -> Path:
    """inputs.json in GC layout; returns the socket folder (created)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "inputs.json").write_text(json.dumps([{
        "file": None, "image": {"name": image_name}, "value": None,
        "interface": {"slug": slug, "kind": "Image", "super_kind": "Image", "relative_path": relative_path}}]))
    folder = root / relative_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_stack(path: Path, pages: np.ndarray | list[np.ndarray]) -> Path:
    """SimpleITK writer: [N, H, W] or [N, H, W, C] -> multi-page TIFF (deflate) or MetaImage, by suffix."""
    pages = np.stack(pages) if isinstance(pages, list) else pages
    image = sitk.GetImageFromArray(pages, isVector=pages.ndim == 4)
    if path.suffix.lower() == ".mha":
        sitk.WriteImage(image, str(path), useCompression=True)
    else:
        sitk.WriteImage(image, str(path), useCompression=True, compressor="Deflate")
    return path


def write_tiff(path: Path, pages: list[np.ndarray], colormap: np.ndarray | list[np.ndarray] | None = None, *,
               byteorder: str = "<", bigtiff: bool = False, tile: int | None = None, extra_tags=()) -> Path:
    """A plain uncompressed TIFF, written byte by byte: pages [H, W] (gray, or palette indices with ``colormap``
    uint16 [3, 2 ** bits], or a list of one per page) or [H, W, C] (RGB, RGBA, gray + alpha), of any integer or
    float type (signed and float pages get their SampleFormat); pages may differ. Little-endian (``byteorder=">"``:
    big-endian), classic TIFF (``bigtiff``: BigTIFF, 64-bit offsets), one strip per page (``tile``: square tiles of
    that many px, the page zero-padded to whole tiles); ``extra_tags``: (tag, type 3 | 4 | 16, values) added to
    every page directory. For what SimpleITK cannot write."""
    e, formats = byteorder, {3: "H", 4: "I", 16: "Q"}
    count_fmt, offset_fmt, offset_type = ("Q", "Q", 16) if bigtiff else ("H", "I", 4)
    value_size = struct.calcsize(offset_fmt)
    out = bytearray(b"II" if e == "<" else b"MM")
    out += struct.pack(e + "HHHQ", 43, 8, 0, 0) if bigtiff else struct.pack(e + "HI", 42, 0)
    link = 8 if bigtiff else 4  # where the offset of the next page directory goes
    maps = colormap if isinstance(colormap, list) else [colormap] * len(pages)
    for page, colormap in zip(pages, maps):
        page = np.ascontiguousarray(page, dtype=page.dtype.newbyteorder(e))
        height, width = page.shape[:2]
        samples = 1 if page.ndim == 2 else page.shape[2]
        if tile:
            rows, cols = -(-height // tile), -(-width // tile)
            padded = np.zeros((rows * tile, cols * tile, *page.shape[2:]), page.dtype)
            padded[:height, :width] = page
            blocks = [padded[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile].tobytes()
                      for r in range(rows) for c in range(cols)]
        else:
            blocks = [page.tobytes()]
        starts = []
        for block in blocks:
            starts.append(len(out))
            out += block + b"\x00" * (len(block) % 2)
        photometric = 3 if colormap is not None else 1 if samples <= 2 else 2
        entries = [(256, 4, [width]), (257, 4, [height]), (258, 3, [page.itemsize * 8] * samples), (259, 3, [1]),
                   (262, 3, [photometric]), (277, 3, [samples]), (284, 3, [1]), *extra_tags]
        if tile:
            entries += [(322, 4, [tile]), (323, 4, [tile]), (324, offset_type, starts),
                        (325, 4, [len(b) for b in blocks])]
        else:
            entries += [(273, offset_type, starts), (278, 4, [height]), (279, 4, [page.nbytes])]
        if samples in (2, 4):
            entries.append((338, 3, [2]))  # ExtraSamples: unassociated alpha
        if page.dtype.kind in "if":
            entries.append((339, 3, [2 if page.dtype.kind == "i" else 3] * samples))  # SampleFormat
        if colormap is not None:
            entries.append((320, 3, np.asarray(colormap, np.uint16).ravel().tolist()))
        entries.sort(key=lambda entry: entry[0])  # TIFF directories list their tags in ascending order
        ifd = len(out)
        values = ifd + struct.calcsize(count_fmt) + (4 + 2 * value_size) * len(entries) + value_size
        directory, extra = struct.pack(e + count_fmt, len(entries)), bytearray()
        for tag, typ, items in entries:
            packed = struct.pack(f"{e}{len(items)}{formats[typ]}", *items)
            if len(packed) <= value_size:  # the value itself, left-justified
                directory += struct.pack(f"{e}HH{offset_fmt}", tag, typ, len(items)) + packed.ljust(value_size, b"\x00")
            else:
                directory += struct.pack(f"{e}HH{offset_fmt}{offset_fmt}", tag, typ, len(items), values + len(extra))
                extra += packed
        struct.pack_into(e + offset_fmt, out, link, ifd)
        link = ifd + len(directory)
        out += directory + bytes(value_size) + extra
    path.write_bytes(bytes(out))
    return path


def real_pages(n: int = 4) -> np.ndarray:
    """n real 128x128 RGB patches (the committed AMi-Br fixture, cycled): uint8 [n, 128, 128, 3]."""
    files = sorted((AMIBR_FIXTURE / "patches").glob("*/*.png"))
    return np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(files[i % len(files)])))[..., :3] for i in range(n)])


def pil_pages(path: Path) -> np.ndarray:
    """Every page of a TIFF as Pillow decodes it (an independent reader; the test is skipped without Pillow):
    uint8 [N, H, W, 3]."""
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(path) as image:
        pages = []
        for i in range(image.n_frames):
            image.seek(i)
            pages.append(np.asarray(image.convert("RGB")))
    return np.stack(pages)


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    return make_tiny_ensemble(tmp_path / "weights")


@pytest.fixture
def gc_input(tmp_path) -> Path:
    """A copy of the committed 16-page test input."""
    return Path(shutil.copytree(HERE / "input", tmp_path / "input"))


@pytest.fixture(scope="module")
def patches():
    from training.data import DataSource, load

    return load([DataSource(AMIBR_FIXTURE / "manifest.csv")])
