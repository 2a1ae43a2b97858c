"""BVLC GoogLeNet's public weights into ``model=googlenet``: the ``.caffemodel`` and the ONNX zoo's ``.onnx``.

BVLC's replication of the paper network (``bvlc_googlenet.caffemodel``, sha1 :data:`BVLC_SHA1`, 68.7 %
top-1 / 88.9 % top-5 with the centre crop) and the ONNX model zoo's GoogLeNet converted from it
(Caffe -> Caffe2 -> ONNX, no auxiliary heads) are the network of Table 1 layer by layer: our
``GoogLeNet()`` defaults (LRN, real 5x5 convolutions, no batch norm, ceil-mode pooling, 5x5/3 aux
pool, 3x3 maxpool4). Their 64 weighted layers map one to one onto ours (:data:`CAFFE_TO_MODULE`)::

    conv1/7x7_s2 -> conv1.conv        conv2/3x3_reduce -> conv2.conv     conv2/3x3 -> conv3.conv
    inception_4a/1x1 -> inception4a.branch1.conv        (3a .. 5b alike)
    inception_4a/3x3_reduce, 3x3 -> inception4a.branch2.0.conv, branch2.1.conv
    inception_4a/5x5_reduce, 5x5 -> inception4a.branch3.0.conv, branch3.1.conv
    inception_4a/pool_proj -> inception4a.branch4.1.conv   (after the 3x3/1 max pool)
    loss1/conv, loss1/fc, loss1/classifier -> aux1.conv.conv, aux1.fc1, aux1.fc2   (loss2 -> aux2)
    loss3/classifier -> fc

Each has a weight blob (convolutions ``(out, in, kh, kw)``, fully connected ``(out, in)``, row-major)
and a bias blob. The input convention differs from ours: BGR, 0..255, minus the mean (104, 117,
123) of ``train_val.prototxt`` (:data:`detect.models.convention.BVLC`); the loaded model records it.

File formats (detected by content, :func:`weights_format`):

- ``.caffemodel``: a Caffe ``NetParameter`` message (``caffe.proto``), read with our own wire-format
  reader (:mod:`detect.models.protowire`) rather than the ``protobuf`` package, which would need a
  Python module generated from ``caffe.proto`` by ``protoc`` (not installed, and generated code we
  would have to ship); we decode only the fields named here. Layers come in the new encoding
  (``layer``, field 100: ``LayerParameter`` name 1, type 2, blobs 7) or the V1 one of older files
  (``layers``, field 2: ``V1LayerParameter`` name 4, type enum 5, blobs 6); a ``BlobProto`` has its
  shape in ``BlobShape`` (7) or in num/channels/height/width (1-4), its values in ``data`` (5, packed
  float) or ``double_data`` (8). Besides the blob shapes, the convolution geometry (stride, pad,
  group, dilation, bias), LRN constants and pooling settings stored in the file are checked against
  the model: a file whose network differs is refused, naming the layer.
- ``.onnx``: read with the ``onnx`` package, external data refused (a file a user loads may not point
  at other files). Initializers ``<caffe layer>_w[_N]`` / ``_b[_N]``; a ``Gemm`` without ``transB``
  (or a ``MatMul``) stores the fully connected weight as ``(in, out)`` and is transposed. The
  convolution geometry of the ``Conv`` nodes is checked.

Policy: every layer of the main network must be in the file and fit (else ``ValueError`` naming the
file and the layer); the auxiliary heads are optional (the ONNX file has none: they stay
initialised and are reported); a classifier for another number of classes (e.g. 201 region
outputs) is left initialised and reported, as ``load_pretrained`` does for our checkpoints. The
file's sha1 is compared with BVLC's for ``.caffemodel`` files: a mismatch is logged as a warning
(the layers still load: e.g. a copy fine-tuned in Caffe), and reported in ``LoadReport.sha1_matches``.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detect.models import protowire as pw
from detect.models.convention import BVLC
from detect.models.googlenet import INCEPTION_TABLE, GoogLeNet, LoadReport

log = logging.getLogger(__name__)

__all__ = ["BVLC_SHA1", "CAFFE_TO_MODULE", "WeightsLayer", "weights_format", "read_caffemodel", "read_onnx",
           "load_bvlc", "model_from_weights"]

BVLC_SHA1 = "405fc5acd08a3bb12de8ee5e23a96bec22f08204"  # models/bvlc_googlenet/readme.md


def _mapping() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(weighted layers, LRN layers, pooling layers): Caffe layer name -> our module path."""
    weighted = {"conv1/7x7_s2": "conv1.conv", "conv2/3x3_reduce": "conv2.conv", "conv2/3x3": "conv3.conv"}
    branches = {"1x1": "branch1", "3x3_reduce": "branch2.0", "3x3": "branch2.1", "5x5_reduce": "branch3.0",
                "5x5": "branch3.1", "pool_proj": "branch4.1"}
    pools = {f"pool{i}/3x3_s2": f"maxpool{i}" for i in (1, 2, 3, 4)}
    for m in INCEPTION_TABLE:
        weighted.update({f"inception_{m}/{b}": f"inception{m}.{mod}.conv" for b, mod in branches.items()})
        pools[f"inception_{m}/pool"] = f"inception{m}.branch4.0"
    for k in (1, 2):
        weighted.update({f"loss{k}/conv": f"aux{k}.conv.conv", f"loss{k}/fc": f"aux{k}.fc1",
                         f"loss{k}/classifier": f"aux{k}.fc2"})
        pools[f"loss{k}/ave_pool"] = f"aux{k}"
    weighted["loss3/classifier"] = "fc"
    pools["pool5/7x7_s1"] = "avgpool"
    return weighted, {"pool1/norm1": "lrn1", "conv2/norm2": "lrn2"}, pools


CAFFE_TO_MODULE, LRN_LAYERS, POOL_LAYERS = _mapping()
CLASSIFIERS = ("loss3/classifier", "loss1/classifier", "loss2/classifier")
# Pooling of the network in train_val.prototxt that is not a module attribute of ours: (method, kernel, stride, pad)
FIXED_POOLS = {"loss1/ave_pool": ("AVE", 5, 3, 0), "loss2/ave_pool": ("AVE", 5, 3, 0), "pool5/7x7_s1": ("AVE", 7, 1, 0)}
V1_TYPES = {3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout", 14: "InnerProduct", 15: "LRN", 17: "Pooling",
            18: "ReLU", 20: "Softmax", 21: "SoftmaxWithLoss", 1: "Accuracy"}


@dataclass
class WeightsLayer:
    """One layer of a weights file: ``blobs`` (float32 arrays in the file's shapes) and ``params``
    (geometry read from the file: conv ``stride, pad, dilation, group, bias_term``; fully connected
    ``transpose``; LRN ``local_size, alpha, beta, k, region``; pooling ``method, kernel, stride, pad,
    ceil, global``)."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    params: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------- detection
def weights_format(path: str | Path) -> str:
    """What a weights file is, from its content: ``"torch"`` (a ``torch.save`` zip or pickle, or
    anything unrecognised: torch's loader then names the problem), ``"caffemodel"`` or ``"onnx"``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save zip, legacy pickle
        return "torch"
    seen = set()
    try:
        for number, wire, _ in pw.iter_fields(path.read_bytes()):
            seen.add((number, wire))
    except pw.WireError:  # a truncated file still shows what it is (its reader then says it is damaged)
        pass
    if (7, pw.LENGTH) in seen and (1, pw.VARINT) in seen:  # ModelProto: ir_version 1, graph 7
        return "onnx"
    if (100, pw.LENGTH) in seen or (2, pw.LENGTH) in seen:  # NetParameter: layer 100 / layers 2
        return "caffemodel"
    return "torch"


# ------------------------------------------------------------------------------------- caffemodel
def _pair(fields: dict, repeated: int, h: int, w: int, default: int) -> tuple[int, int]:
    """Caffe's 2-D parameter: ``<x>_h``/``<x>_w`` when given, else the repeated value (one for both
    axes, or one per axis), else ``default``."""
    if h in fields or w in fields:
        return int(pw.last(fields, h, default)), int(pw.last(fields, w, default))
    values = pw.as_varints(fields.get(repeated, []))
    if not values:
        return default, default
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _conv_params(buf) -> dict:
    f = pw.message_fields(buf)
    return {"kernel": _pair(f, 4, 11, 12, 0), "stride": _pair(f, 6, 13, 14, 1), "pad": _pair(f, 3, 9, 10, 0),
            "dilation": _pair(f, 18, 0, 0, 1), "group": int(pw.last(f, 5, 1)), "bias_term": bool(pw.last(f, 2, 1))}


def _ip_params(buf) -> dict:
    f = pw.message_fields(buf)
    return {"transpose": bool(pw.last(f, 6, 0)), "bias_term": bool(pw.last(f, 2, 1))}


def _lrn_params(buf) -> dict:
    f = pw.message_fields(buf)

    def flt(n, default):
        return pw.as_float(f[n][-1]) if n in f else default

    return {"local_size": int(pw.last(f, 1, 5)), "alpha": flt(2, 1.0), "beta": flt(3, 0.75),
            "region": int(pw.last(f, 4, 0)), "k": flt(5, 1.0)}


def _pool_params(buf) -> dict:
    f = pw.message_fields(buf)
    kernel = (int(pw.last(f, 5, 0)), int(pw.last(f, 6, 0))) if 5 in f else (int(pw.last(f, 2, 0)),) * 2
    stride = (int(pw.last(f, 7, 1)), int(pw.last(f, 8, 1))) if 7 in f else (int(pw.last(f, 3, 1)),) * 2
    pad = (int(pw.last(f, 9, 0)), int(pw.last(f, 10, 0))) if 9 in f else (int(pw.last(f, 4, 0)),) * 2
    return {"method": {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}.get(int(pw.last(f, 1, 0)), "?"), "kernel": kernel,
            "stride": stride, "pad": pad, "global": bool(pw.last(f, 12, 0)), "ceil": int(pw.last(f, 13, 0)) == 0}


def _blob(buf, where: str) -> np.ndarray:
    f = pw.message_fields(buf)
    if 7 in f:
        shape = tuple(pw.as_varints(pw.message_fields(pw.last(f, 7)).get(1, [])))
    else:
        shape = tuple(int(pw.last(f, n, 0)) for n in (1, 2, 3, 4))
    data = pw.as_floats(f[8], double=True) if 8 in f else pw.as_floats(f.get(5, []))
    if int(np.prod(shape)) != data.size:
        raise ValueError(f"{where}: blob shape {shape} holds {int(np.prod(shape))} values but the file has {data.size}")
    return data.astype(np.float32, copy=False).reshape(shape)


def read_caffemodel(path: str | Path) -> tuple[list[WeightsLayer], str]:
    """The layers of a ``.caffemodel`` (Caffe ``NetParameter``), in file order, and the encoding:
    ``"layer"`` (field 100, current Caffe) or ``"layers"`` (field 2, V1). Raises ``ValueError``
    naming the file for malformed content or a file with neither encoding."""
    path = Path(path)
    try:
        net = pw.message_fields(path.read_bytes())
        encodings = [(100, "layer", {"name": 1, "type": 2, "blobs": 7, "conv": 106, "ip": 117, "lrn": 118, "pool": 121}),
                     (2, "layers", {"name": 4, "type": 5, "blobs": 6, "conv": 10, "ip": 17, "lrn": 18, "pool": 19})]
        used = [(n, enc, fields) for n, enc, fields in encodings if n in net]
        if not used:
            raise ValueError("no layers (neither field 100 'layer' nor field 2 'layers' of NetParameter)")
        if len(used) == 2:
            raise ValueError("both 'layer' and V1 'layers' present: not a file Caffe writes")
        number, encoding, fn = used[0]
        layers = []
        for _, buf in net[number]:
            lf = pw.message_fields(buf)
            name = pw.as_text(pw.last(lf, fn["name"], b""))
            if encoding == "layer":
                type_ = pw.as_text(pw.last(lf, fn["type"], b""))
            else:
                if not name and 1 in lf:
                    raise ValueError("V0 layer encoding (Caffe before 2014); upgrade the file with Caffe's "
                                     "upgrade_net_proto_binary")
                type_ = V1_TYPES.get(int(pw.last(lf, fn["type"], 0)), f"V1 type {pw.last(lf, fn['type'], 0)}")
            layer = WeightsLayer(name, type_)
            layer.blobs = [_blob(b, f"layer {name!r}") for _, b in lf.get(fn["blobs"], [])]
            for key, parse in (("conv", _conv_params), ("ip", _ip_params), ("lrn", _lrn_params), ("pool", _pool_params)):
                if fn[key] in lf:
                    layer.params.update(parse(pw.last(lf, fn[key])))
            layers.append(layer)
    except pw.WireError as e:
        raise ValueError(f"{path}: not a readable .caffemodel ({e})") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return layers, encoding


# ------------------------------------------------------------------------------------------- onnx
_ONNX_NAME = re.compile(r"^(?P<layer>.+)_(?P<kind>[wb])(?:_\d+)?$")


def read_onnx(path: str | Path) -> list[WeightsLayer]:
    """The weighted layers of an ONNX-zoo GoogLeNet: initializers ``<layer>_w[_N]``/``<layer>_b[_N]``
    grouped by Caffe layer name, with the geometry of the node that uses them (``Conv``: stride, pad,
    group, dilation; ``Gemm``/``MatMul``: whether the weight is stored transposed). Raises
    ``ValueError`` naming the file for unreadable files, external data or non-float weights."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError and friends
        raise ValueError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
    graph = model.graph
    consumers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, node)
    layers: dict[str, WeightsLayer] = {}
    for init in graph.initializer:
        m = _ONNX_NAME.match(init.name)
        if m is None:
            continue  # shape constants and the like
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(f"{path}: initializer {init.name!r} keeps its values in an external file; "
                             "only self-contained ONNX files are read")
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise ValueError(f"{path}: initializer {init.name!r} is {onnx.TensorProto.DataType.Name(init.data_type)}, "
                             "not float (a quantised model?): only float GoogLeNet files are imported")
        name, kind = m.group("layer"), m.group("kind")
        node = consumers.get(init.name)
        layer = layers.setdefault(name, WeightsLayer(name, "?", [None, None]))
        layer.blobs[0 if kind == "w" else 1] = numpy_helper.to_array(init).astype(np.float32)
        if node is not None and kind == "w":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Conv":
                pads = list(attrs.get("pads", [0, 0, 0, 0]))
                if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or pads[:2] != pads[2:]:
                    raise ValueError(f"{path}: layer {name!r}: asymmetric or automatic padding {pads}")
                layer.type = "Convolution"
                layer.params = {"stride": tuple(attrs.get("strides", [1, 1])), "pad": tuple(pads[:2]),
                                "dilation": tuple(attrs.get("dilations", [1, 1])), "group": int(attrs.get("group", 1)),
                                "bias_term": True}
            elif node.op_type in ("Gemm", "MatMul"):
                if node.op_type == "Gemm" and (attrs.get("alpha", 1.0) != 1.0 or attrs.get("transA", 0)
                                               or list(node.input).index(init.name) != 1):
                    raise ValueError(f"{path}: layer {name!r}: a Gemm other than x @ W (+ b)")
                layer.type = "InnerProduct"
                layer.params = {"transpose": node.op_type == "MatMul" or not attrs.get("transB", 0), "bias_term": True}
    for layer in layers.values():
        if layer.blobs[1] is None:
            layer.blobs = layer.blobs[:1]
            layer.params["bias_term"] = False
        if layer.blobs[0] is None:
            raise ValueError(f"{path}: layer {layer.name!r} has a bias but no weight initializer")
    return list(layers.values())


# ------------------------------------------------------------------------------------------ load
def _check_architecture(model: nn.Module, path: Path) -> None:
    kwargs = getattr(model, "model_kwargs", None)
    if not isinstance(model, GoogLeNet) or kwargs is None:
        raise ValueError(f"{path}: BVLC GoogLeNet weights load into a GoogLeNet, not a {type(model).__name__}")
    need = {"batch_norm": False, "five_by_five": True, "lrn": True, "width": 1.0, "pool4_size": 3,
            "aux_pool": "paper", "transform_input": False}
    wrong = {k: kwargs.get(k) for k, v in need.items() if kwargs.get(k) != v}
    if wrong:
        raise ValueError(f"{path}: BVLC GoogLeNet is the paper network (model=googlenet: "
                         f"{', '.join(f'{k}={v}' for k, v in need.items())}); this model has "
                         f"{', '.join(f'{k}={v}' for k, v in wrong.items())}")


def _fit(path: Path, layer: WeightsLayer, shape: tuple[int, ...]) -> np.ndarray:
    """The weight blob of ``layer`` in our layout ``shape``: leading singleton axes of V1 blobs dropped,
    a transposed fully connected weight transposed back. Never reshaped by element count."""
    w = layer.blobs[0]
    while w.ndim > len(shape) and w.shape[0] == 1:
        w = w.reshape(w.shape[1:])
    if layer.params.get("transpose"):
        if w.ndim != 2:
            raise ValueError(f"{path}: layer {layer.name!r}: transposed weight of shape {w.shape}")
        w = w.T
    if w.ndim != len(shape) or (w.shape != shape and w.shape[1:] != shape[1:]):
        raise ValueError(f"{path}: layer {layer.name!r} does not fit: weight {tuple(layer.blobs[0].shape)} "
                         f"{'(stored transposed) ' if layer.params.get('transpose') else ''}against the model's {shape}")
    return np.ascontiguousarray(w)


def _check_geometry(path: Path, layer: WeightsLayer, module: nn.Module) -> None:
    p = layer.params
    if isinstance(module, nn.Conv2d):
        if layer.type != "Convolution":
            raise ValueError(f"{path}: layer {layer.name!r} is {layer.type}, expected Convolution")
        if not p:
            return  # an ONNX weight no node uses: nothing to check beyond its shape
        want = {"stride": tuple(module.stride), "pad": tuple(module.padding), "dilation": tuple(module.dilation),
                "group": module.groups, "bias_term": True}
    elif isinstance(module, nn.Linear):
        if layer.type != "InnerProduct":
            raise ValueError(f"{path}: layer {layer.name!r} is {layer.type}, expected InnerProduct")
        want = {"bias_term": True}
    elif isinstance(module, nn.MaxPool2d):
        want = {"method": "MAX", "kernel": (module.kernel_size,) * 2, "stride": (module.stride,) * 2,
                "pad": (module.padding,) * 2, "global": False, "ceil": module.ceil_mode}
    elif hasattr(module, "alpha"):  # LocalResponseNorm
        want = {"local_size": module.size, "region": 0, "alpha": module.alpha, "beta": module.beta, "k": module.k}
    else:  # FIXED_POOLS
        method, k, s, pad = FIXED_POOLS[layer.name]
        want = {"method": method, "kernel": (k, k), "stride": (s, s), "pad": (pad, pad), "global": False, "ceil": True}
    for key, value in want.items():
        got = p.get(key, value)
        if isinstance(value, float):  # LRN constants are float32 in the file
            same = abs(got - value) <= 1e-6 * abs(value)
        else:
            same = tuple(np.atleast_1d(got)) == tuple(np.atleast_1d(value))
        if not same:
            raise ValueError(f"{path}: layer {layer.name!r} has {key}={got}, model=googlenet has {key}={value}: "
                             "not the network this model implements")


def load_bvlc(model: GoogLeNet, path: str | Path, kind: str | None = None) -> LoadReport:
    """Load BVLC GoogLeNet weights (``.caffemodel`` or ONNX-zoo ``.onnx``) into ``model`` (a
    ``model=googlenet`` GoogLeNet of any ``num_classes``, with or without aux heads) and set its
    input convention to :data:`detect.models.convention.BVLC`. See the module docstring for the
    policy; returns the :class:`LoadReport` (``loaded_layers``, ``skipped_layers`` by reason, sha1)."""
    path = Path(path)
    _check_architecture(model, path)
    return _load(model, path, *_read(path, kind or weights_format(path)))


def _read(path: Path, kind: str) -> tuple[list[WeightsLayer], str]:
    """(layers, source description) of a weights file of format ``kind``."""
    if kind == "caffemodel":
        layers, encoding = read_caffemodel(path)
        return layers, f"caffemodel ({'V1 layers' if encoding == 'layers' else 'layer'} encoding)"
    if kind == "onnx":
        return read_onnx(path), "onnx"
    raise ValueError(f"{path}: not a .caffemodel or ONNX file")


def _load(model: GoogLeNet, path: Path, layers: list[WeightsLayer], source: str) -> LoadReport:
    report = LoadReport(source=source, sha1=_sha1(path))
    by_name: dict[str, WeightsLayer] = {}
    for layer in layers:
        if layer.name in by_name and (layer.blobs or by_name[layer.name].blobs):
            raise ValueError(f"{path}: layer name {layer.name!r} occurs twice")
        by_name.setdefault(layer.name, layer)
    modules = dict(model.named_modules())
    own = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    for name, target in CAFFE_TO_MODULE.items():
        module, layer = modules.get(target), by_name.get(name)
        if not isinstance(module, (nn.Conv2d, nn.Linear)):  # aux head not built, classifier replaced (MultiBox)
            if layer is not None and layer.blobs:
                report.skipped_layers[name] = f"no {target} in this model"
            continue
        if layer is None or not layer.blobs:
            if name.startswith(("loss1/", "loss2/")):
                report.missing += [f"{target}.weight", f"{target}.bias"]
                report.skipped_layers[name] = "not in the file: left initialised"
                continue
            raise ValueError(f"{path}: layer {name!r} (-> {target}) is missing from the file: not BVLC GoogLeNet")
        _check_geometry(path, layer, module)
        if len(layer.blobs) != 2:
            raise ValueError(f"{path}: layer {name!r} has {len(layer.blobs)} blobs, expected a weight and a bias")
        weight = _fit(path, layer, tuple(module.weight.shape))
        bias = layer.blobs[1].reshape(-1)
        if weight.shape != tuple(module.weight.shape) or bias.shape != tuple(module.bias.shape):
            if name not in CLASSIFIERS or weight.shape[0] != bias.shape[0]:
                raise ValueError(f"{path}: layer {name!r} does not fit: weight {weight.shape}, bias {bias.shape} "
                                 f"against the model's {tuple(module.weight.shape)}, {tuple(module.bias.shape)}")
            report.mismatched += [f"{target}.weight", f"{target}.bias"]
            report.skipped_layers[name] = (f"classifier of {weight.shape[0]} outputs, the model has "
                                           f"{module.weight.shape[0]}: left initialised")
            continue
        to_load[f"{target}.weight"] = torch.from_numpy(weight)
        to_load[f"{target}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
        report.loaded_layers.append(name)
    if source.startswith("caffemodel"):
        for name, target in {**LRN_LAYERS, **POOL_LAYERS}.items():
            if target not in modules or (name.startswith("loss") and name not in by_name):
                continue  # aux heads not built, or not in the file (a deploy-only file: they stay initialised)
            if name not in by_name:
                raise ValueError(f"{path}: layer {name!r} is missing from the file: not BVLC GoogLeNet")
            _check_geometry(path, by_name[name], modules[target])
    for name, layer in by_name.items():
        if layer.blobs and name not in CAFFE_TO_MODULE:
            report.skipped_layers[name] = "not a layer of model=googlenet"
    report.loaded = sorted(to_load)
    report.unexpected = [n for n in report.skipped_layers if n not in CAFFE_TO_MODULE]
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in to_load.items()}, strict=False)
    model.set_input_convention(BVLC)
    _log_report(path, report, len(own))
    return report


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _log_report(path: Path, report: LoadReport, total: int) -> None:
    if report.source.startswith("caffemodel"):
        report.sha1_matches = report.sha1 == BVLC_SHA1
        if report.sha1_matches:
            log.info("%s: sha1 %s: BVLC's released bvlc_googlenet.caffemodel", path, report.sha1)
        else:
            log.warning("%s: sha1 %s differs from BVLC's released bvlc_googlenet.caffemodel (%s): another snapshot, "
                        "a copy fine-tuned or altered, or a damaged download; its layers fit and were loaded",
                        path, report.sha1, BVLC_SHA1)
    else:
        log.info("%s: sha1 %s", path, report.sha1)
    log.info("%s (%s): loaded %d layers (%d of the model's %d tensors); input convention now %s", path,
             report.source, len(report.loaded_layers), len(report.loaded), total, BVLC.describe())
    by_reason: dict[str, list[str]] = {}
    for name, reason in report.skipped_layers.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        level = logging.WARNING if reason.startswith("not in the file") else logging.INFO
        log.log(level, "%s: not loaded (%s): %s", path, reason, ", ".join(names))


def model_from_weights(path: str | Path, kind: str | None = None) -> tuple[GoogLeNet, LoadReport]:
    """A ``model=googlenet`` GoogLeNet built to the file's size (its classifier's outputs; aux heads
    when the file has them) with every tensor loaded from BVLC weights; eval mode."""
    path = Path(path)
    layers, source = _read(path, kind or weights_format(path))
    by_name = {layer.name: layer for layer in layers if layer.blobs}
    if "loss3/classifier" not in by_name:
        raise ValueError(f"{path}: no layer 'loss3/classifier': not BVLC GoogLeNet")
    num_classes = int(by_name["loss3/classifier"].blobs[-1].size)  # the bias: one value per output
    aux = all(f"loss{k}/{n}" in by_name for k in (1, 2) for n in ("conv", "fc", "classifier"))
    model = GoogLeNet(num_classes=num_classes, aux_logits=aux, init_weights=False)
    report = _load(model, path, layers, source)
    if report.missing or report.mismatched:
        raise ValueError(f"{path}: not every tensor loaded ({report.missing + report.mismatched})")
    return model.eval(), report
