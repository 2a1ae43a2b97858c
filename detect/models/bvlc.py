"""BVLC GoogLeNet's public weights into ``model=googlenet``: the ``.caffemodel`` and the ONNX zoo's ``.onnx``.

BVLC's replication of the paper network (``bvlc_googlenet.caffemodel``, sha1 :data:`BVLC_SHA1`, 68.7 %
top-1 / 88.9 % top-5 with the centre crop) and the ONNX model zoo's GoogLeNet converted from it
(Caffe -> Caffe2 -> ONNX, no auxiliary heads) are the network of Table 1 layer by layer: our
``GoogLeNet()`` defaults (LRN, real 5x5 convolutions, no batch norm, ceil-mode pooling, 5x5/3 aux
pool, 3x3 maxpool4). Their 64 weighted layers map one to one onto ours (:data:`CAFFE_TO_MODULE`,
e.g. ``inception_4a/5x5_reduce`` -> ``inception4a.branch3.0.conv``, ``loss1/fc`` -> ``aux1.fc1``,
``loss3/classifier`` -> ``fc``), each a weight blob (convolutions ``(out, in, kh, kw)``, fully connected
``(out, in)``, row-major) and a bias blob. The input convention differs from ours: BGR, 0..255, minus
the mean (104, 117, 123) of ``train_val.prototxt`` (:data:`detect.models.convention.BVLC`); the loaded
model records it.

File formats (detected by content, :func:`weights_format`):

- ``.caffemodel``: a Caffe ``NetParameter`` message (``caffe.proto``), read with our own wire-format
  reader (:mod:`detect.models.protowire`) rather than the ``protobuf`` package, which would need a
  Python module generated from ``caffe.proto`` by ``protoc`` (not installed, and generated code we
  would have to ship); we decode only the fields :func:`read_caffemodel` names, of the new ``layer``
  or the older V1 ``layers`` encoding. Besides the blob shapes, the convolution geometry (stride, pad,
  group, dilation, bias), LRN constants and pooling settings stored in the file are checked against
  the model: a file whose network differs is refused, naming the layer.
- ``.onnx``: read with the ``onnx`` package, external data refused (a file a user loads may not point
  at other files). Initializers ``<caffe layer>_w[_N]`` / ``_b[_N]``; a ``Gemm`` without ``transB``
  (or a ``MatMul``) stores the fully connected weight as ``(in, out)`` and is transposed. The
  convolution geometry of the ``Conv`` nodes is checked.

Loading them into a model (the policy: which layers must be there and fit, the sha1 check):
:mod:`detect.models.weights` (``load_pretrained``, ``load_model``).
"""
from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detect.models import protowire as pw
from detect.models.googlenet import INCEPTION_TABLE

__all__ = ["BVLC_SHA1", "CAFFE_TO_MODULE", "WeightsLayer", "weights_format", "read_caffemodel", "read_onnx",
           "read_weights"]

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
    with contextlib.suppress(pw.WireError):  # a truncated file still shows what it is (its reader names the damage)
        for number, wire, _ in pw.iter_fields(path.read_bytes()):
            seen.add((number, wire))
    if (7, pw.LENGTH) in seen and (1, pw.VARINT) in seen:  # ModelProto: ir_version 1, graph 7
        return "onnx"
    if (100, pw.LENGTH) in seen or (2, pw.LENGTH) in seen:  # NetParameter: layer 100 / layers 2
        return "caffemodel"
    return "torch"


def _pair(fields: dict, repeated: int, h: int, w: int, default: int) -> tuple[int, int]:
    """Caffe's 2-D parameter: ``<x>_h``/``<x>_w`` when given, else the repeated value (one for both
    axes, or one per axis), else ``default``."""
    if h in fields or w in fields:
        return int(pw.last(fields, h, default)), int(pw.last(fields, w, default))
    values = pw.as_varints(fields.get(repeated, [])) or [default]
    return values[0], values[1 if len(values) > 1 else 0]


def _layer_params(kind: str, buf) -> dict:
    """The ``params`` of a ``kind`` (``conv | ip | lrn | pool``) parameter message (``WeightsLayer``)."""
    f = pw.message_fields(buf)
    if kind == "conv":
        return {"kernel": _pair(f, 4, 11, 12, 0), "stride": _pair(f, 6, 13, 14, 1), "pad": _pair(f, 3, 9, 10, 0),
                "dilation": _pair(f, 18, 0, 0, 1), "group": int(pw.last(f, 5, 1)), "bias_term": bool(pw.last(f, 2, 1))}
    if kind == "ip":
        return {"transpose": bool(pw.last(f, 6, 0)), "bias_term": bool(pw.last(f, 2, 1))}
    if kind == "lrn":
        return {"local_size": int(pw.last(f, 1, 5)), "alpha": pw.last_float(f, 2, 1.0),
                "beta": pw.last_float(f, 3, 0.75), "region": int(pw.last(f, 4, 0)), "k": pw.last_float(f, 5, 1.0)}
    return {"method": {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}.get(int(pw.last(f, 1, 0)), "?"),
            "kernel": _pair(f, 2, 5, 6, 0), "stride": _pair(f, 3, 7, 8, 1), "pad": _pair(f, 4, 9, 10, 0),
            "global": bool(pw.last(f, 12, 0)), "ceil": int(pw.last(f, 13, 0)) == 0}


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


def read_caffemodel(path: str | Path, data: bytes) -> tuple[list[WeightsLayer], str]:
    """The layers of a ``.caffemodel`` of content ``data`` in file order, and ``read_weights``' source (naming
    the ``layer`` or V1 ``layers`` encoding). ``ValueError`` naming ``path`` for malformed content or neither."""
    try:
        net = pw.message_fields(data)
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
            for key in ("conv", "ip", "lrn", "pool"):
                if fn[key] in lf:
                    layer.params.update(_layer_params(key, pw.last(lf, fn[key])))
            layers.append(layer)
    except pw.WireError as e:
        raise ValueError(f"{path}: not a readable .caffemodel ({e})") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return layers, f"caffemodel ({'V1 layers' if encoding == 'layers' else 'layer'} encoding)"


_ONNX_NAME = re.compile(r"^(?P<layer>.+)_(?P<kind>[wb])(?:_\d+)?$")


def read_onnx(path: str | Path, data: bytes) -> list[WeightsLayer]:
    """The weighted layers of an ONNX-zoo GoogLeNet of content ``data``, by Caffe layer name, with the geometry
    of the node that uses them. Raises ``ValueError`` naming ``path`` for unreadable content, external data
    or non-float weights."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(data)  # external data is never loaded (and refused below)
    except Exception as e:  # DecodeError and friends
        raise ValueError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
    consumers = {name: node for node in reversed(model.graph.node) for name in node.input}  # the first reading each
    layers: dict[str, WeightsLayer] = {}
    for init in model.graph.initializer:
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


def read_weights(path: str | Path, kind: str) -> tuple[list[WeightsLayer], str, str]:
    """(layers, source description, sha1) of a weights file of format ``kind`` (``weights_format``),
    read once."""
    if kind not in ("caffemodel", "onnx"):
        raise ValueError(f"{path}: not a .caffemodel or ONNX file")
    data = Path(path).read_bytes()
    sha1 = hashlib.sha1(data).hexdigest()
    if kind == "onnx":
        return read_onnx(path, data), "onnx", sha1
    return (*read_caffemodel(path, data), sha1)
