"""An independent reference for BVLC GoogLeNet, written from BVLC's prototxt with Caffe's layer rules,
and writers of BVLC-style weights files (test helpers; no code shared with detect/models).

- :func:`caffe_schema` builds protobuf message classes from the text of ``caffe.proto`` (a small
  parser of its proto2 syntax, then Google's ``protobuf`` descriptors), so that the prototxt is read
  by ``protobuf``'s own text parser and the ``.caffemodel`` files are written by ``protobuf``'s own
  serializer, with the field numbers of ``caffe.proto``: our wire-format reader is checked against
  Google's encoder, not against a second copy of its own constants.
- :func:`reference_forward` runs the TEST-phase layers of a prototxt in float64 with Caffe's rules:
  convolution and inner product on the blobs as stored (``(out, in, kh, kw)``, ``(out, in)``); pooling
  with Caffe's output size (rounded up, the last window clipped to start inside the padded image) and
  Caffe's average divisor (the window clipped to the padded image, not to the image); LRN across
  channels ``x / (k + alpha / n * sum of squares over n channels)^beta``; dropout as identity.
- :func:`write_caffemodel` (``layer`` or V1 ``layers`` encoding) and :func:`write_onnx` (the ONNX
  zoo's naming: ``<layer>_w_0``, ``<layer>_b_0``, ``data_0``; fully connected as ``Gemm`` with
  ``transB=1``) write weights files a user could have.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SCALARS = {"double": 1, "float": 2, "int64": 3, "uint64": 4, "int32": 5, "bool": 8, "string": 9, "bytes": 12,
           "uint32": 13, "sint32": 17, "sint64": 18, "fixed32": 7, "fixed64": 6, "sfixed32": 15, "sfixed64": 16}


def _proto_tokens(text: str) -> list[str]:
    text = re.sub(r"//[^\n]*", "", text)
    return re.findall(r'"[^"]*"|\'[^\']*\'|[A-Za-z_][\w.]*|-?\.?\d[\w.+-]*|[{}\[\]=;,<>]', text)


def caffe_schema(proto_path: str | Path) -> dict[str, type]:
    """Message classes of every message in ``caffe.proto`` (``{"NetParameter": cls, ...}``)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    toks = _proto_tokens(Path(proto_path).read_text())
    fdp = descriptor_pb2.FileDescriptorProto(name="caffe_test.proto", package="caffe", syntax="proto2")
    pos = 0
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    enums: set[str] = set()  # fully qualified enum names (".caffe.X" or ".caffe.Msg.X")
    pending = []  # (field proto, type name, scope message name)

    def parse_enum(container, scope):
        nonlocal pos
        name = toks[pos + 1]
        enum = container.enum_type.add(name=name)
        enums.add(f".caffe.{scope + '.' if scope else ''}{name}")
        pos += 3  # enum NAME {
        while toks[pos] != "}":
            enum.value.add(name=toks[pos], number=int(toks[pos + 2]))
            pos += 4  # NAME = N ;
        pos += 1

    while pos < len(toks):
        t = toks[pos]
        if t in ("syntax", "package", "option"):
            while toks[pos] != ";":
                pos += 1
            pos += 1
        elif t == "enum":
            parse_enum(fdp, "")
        elif t == "message":
            msg = fdp.message_type.add(name=toks[pos + 1])
            messages[msg.name] = msg
            pos += 3
            while toks[pos] != "}":
                if toks[pos] == "enum":
                    parse_enum(msg, msg.name)
                    continue
                label, type_, name, number = toks[pos], toks[pos + 1], toks[pos + 2], int(toks[pos + 4])
                pos += 5
                opts = []
                if toks[pos] == "[":
                    end = toks.index("]", pos)
                    opts = toks[pos + 1:end]
                    pos = end + 1
                assert toks[pos] == ";", (name, toks[pos:pos + 3])
                pos += 1
                f = msg.field.add(name=name, number=number, label={"optional": 1, "required": 2, "repeated": 3}[label])
                if "packed" in opts and opts[opts.index("packed") + 2] == "true":
                    f.options.packed = True
                if "default" in opts:  # Caffe relies on them (e.g. LRN k = 1, pooling stride 1)
                    f.default_value = opts[opts.index("default") + 2].strip("'\"")
                pending.append((f, type_, msg.name))
            pos += 1
        else:
            raise ValueError(f"unexpected token {t!r} in caffe.proto")
    for f, type_, scope in pending:
        if type_ in SCALARS:
            f.type = SCALARS[type_]
        elif f".caffe.{scope}.{type_}" in enums:
            f.type, f.type_name = 14, f".caffe.{scope}.{type_}"
        elif f".caffe.{type_}" in enums:
            f.type, f.type_name = 14, f".caffe.{type_}"
        else:
            f.type, f.type_name = 11, f".caffe.{type_}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}")) for name in messages}


def read_prototxt(path: str | Path, schema: dict[str, type]):
    """A prototxt parsed into a ``NetParameter`` by protobuf's text format parser."""
    from google.protobuf import text_format

    return text_format.Parse(Path(path).read_text(), schema["NetParameter"]())


def phase_test_layers(net) -> list:
    """The layers of the TEST phase (those without an ``include { phase: TRAIN }`` rule)."""
    return [layer for layer in net.layer if not any(rule.HasField("phase") and rule.phase == 0 for rule in layer.include)]


def input_mean(net) -> tuple[float, ...]:
    """The per-channel mean of the TEST data layer's ``transform_param`` (BGR order)."""
    for layer in phase_test_layers(net):
        if layer.HasField("transform_param") and layer.transform_param.mean_value:
            return tuple(layer.transform_param.mean_value)
    raise ValueError("no mean_value in the prototxt")


def bvlc_input(images: np.ndarray, mean: tuple[float, ...]) -> torch.Tensor:
    """uint8 RGB ``[B, H, W, 3]`` -> float64 ``[B, 3, H, W]``: BGR channel order, 0..255, minus ``mean``."""
    x = torch.from_numpy(images[..., ::-1].astype(np.float64)).permute(0, 3, 1, 2)
    return x - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)


def _caffe_pool(x: torch.Tensor, p) -> torch.Tensor:
    k, s, pad = p.kernel_size, p.stride, p.pad
    h, w = x.shape[-2:]

    def out_size(n):
        o = int(math.ceil((n + 2 * pad - k) / s)) + 1
        if pad and (o - 1) * s >= n + pad:
            o -= 1
        return o

    oh, ow = out_size(h), out_size(w)
    out = x.new_empty(x.shape[0], x.shape[1], oh, ow)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - pad, j * s - pad
            he, we = min(hs + k, h + pad), min(ws + k, w + pad)
            area = (he - hs) * (we - ws)
            window = x[:, :, max(hs, 0):min(he, h), max(ws, 0):min(we, w)]
            if p.pool == 0:  # MAX
                out[:, :, i, j] = window.amax(dim=(2, 3))
            else:  # AVE: Caffe divides by the window clipped to the padded image
                out[:, :, i, j] = window.sum(dim=(2, 3)) / area
    return out


def _caffe_lrn(x: torch.Tensor, p) -> torch.Tensor:
    n, half = p.local_size, (p.local_size - 1) // 2
    sq = F.pad(x * x, (0, 0, 0, 0, half, half))  # zero channels beyond both ends
    window = torch.stack([sq[:, i:i + x.shape[1]] for i in range(n)]).sum(0)
    return x * (p.k + p.alpha / n * window) ** (-p.beta)


def reference_forward(layers, weights: dict[str, list[np.ndarray]], data: torch.Tensor,
                      rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """Every blob of the net for ``data`` (float64 ``[B, 3, H, W]``, already BGR minus mean).

    weights: layer name -> [W (out, in, kh, kw) or (out, in), b (out,)] float64. With ``rng`` a
    missing layer gets random weights (He-scaled normal, small biases) of the shape the prototxt
    and the incoming blob give, added to ``weights``.
    """
    blobs = {"data": data}
    for layer in layers:
        if layer.type in ("Data", "Input", "SoftmaxWithLoss", "Accuracy", "Softmax"):
            continue
        x = [blobs[b] for b in layer.bottom]
        if layer.type == "Convolution":
            p = layer.convolution_param
            k, s, pad = p.kernel_size[0], (p.stride or [1])[0], (p.pad or [0])[0]
            if layer.name not in weights:
                shape = (p.num_output, x[0].shape[1], k, k)
                weights[layer.name] = [rng.normal(0, math.sqrt(2 / np.prod(shape[1:])), shape),
                                       rng.uniform(-0.1, 0.1, p.num_output)]
            w, b = (torch.from_numpy(np.asarray(a, np.float64)) for a in weights[layer.name])
            y = F.conv2d(x[0], w, b, stride=s, padding=pad)
        elif layer.type == "InnerProduct":
            flat = x[0].reshape(x[0].shape[0], -1)
            if layer.name not in weights:
                shape = (layer.inner_product_param.num_output, flat.shape[1])
                weights[layer.name] = [rng.normal(0, math.sqrt(1 / shape[1]), shape), rng.uniform(-0.1, 0.1, shape[0])]
            w, b = (torch.from_numpy(np.asarray(a, np.float64)) for a in weights[layer.name])
            y = flat @ w.T + b
        elif layer.type == "ReLU":
            y = x[0].clamp(min=0)
        elif layer.type == "Pooling":
            y = _caffe_pool(x[0], layer.pooling_param)
        elif layer.type == "LRN":
            y = _caffe_lrn(x[0], layer.lrn_param)
        elif layer.type == "Concat":
            y = torch.cat(x, dim=1)
        elif layer.type == "Dropout":
            y = x[0]
        else:
            raise ValueError(f"reference has no rule for layer type {layer.type} ({layer.name})")
        blobs[layer.top[0]] = y
    return blobs


def _blob(proto, array: np.ndarray, v1_shape: tuple[int, ...] | None = None) -> None:
    if v1_shape is None:
        proto.shape.dim.extend(array.shape)
    else:
        proto.num, proto.channels, proto.height, proto.width = v1_shape
    proto.data.extend(np.asarray(array, np.float32).ravel().tolist())


V1_ENUM = {"Convolution": "CONVOLUTION", "InnerProduct": "INNER_PRODUCT", "ReLU": "RELU", "Pooling": "POOLING",
           "LRN": "LRN", "Concat": "CONCAT", "Dropout": "DROPOUT", "Data": "DATA", "Softmax": "SOFTMAX",
           "SoftmaxWithLoss": "SOFTMAX_LOSS", "Accuracy": "ACCURACY"}


def write_caffemodel(path: str | Path, net, weights: dict[str, list[np.ndarray]], schema: dict[str, type],
                     encoding: str = "layer", mutate=None) -> None:
    """Write ``net`` (a parsed prototxt) with ``weights`` as a .caffemodel, every layer with its
    parameters as Caffe does; ``encoding="layers"`` writes V1 layers with 4-D num/channels/height/width
    blob shapes (fully connected ``(1, 1, out, in)``, biases ``(1, 1, 1, out)``), as old files have.
    ``mutate(name, [W, b]) -> [W, b]`` may alter blobs on the way (mapping-error tests)."""
    out = schema["NetParameter"](name=net.name)
    layer_enum = schema["V1LayerParameter"].DESCRIPTOR.enum_types_by_name["LayerType"]
    for layer in net.layer:
        blobs = weights.get(layer.name)
        if blobs is not None and mutate is not None:
            blobs = mutate(layer.name, blobs)
        if encoding == "layer":
            new = out.layer.add()
            new.CopyFrom(layer)
            for a in blobs or []:
                _blob(new.blobs.add(), a)
        else:
            v1 = out.layers.add(name=layer.name, type=layer_enum.values_by_name[V1_ENUM[layer.type]].number)
            v1.bottom.extend(layer.bottom)
            v1.top.extend(layer.top)
            v1.include.extend(layer.include)
            for field in ("convolution_param", "inner_product_param", "pooling_param", "lrn_param", "dropout_param",
                          "data_param", "transform_param", "accuracy_param", "concat_param"):
                if layer.HasField(field):
                    getattr(v1, field).CopyFrom(getattr(layer, field))
            for a in blobs or []:
                _blob(v1.blobs.add(), a, (1,) * (4 - a.ndim) + tuple(a.shape))
    Path(path).write_bytes(out.SerializeToString())


def write_onnx(path: str | Path, layers, weights: dict[str, list[np.ndarray]], size: int = 224) -> None:
    """A runnable ONNX GoogLeNet of ``layers`` (deploy.prototxt's) named as the ONNX model zoo names it
    (input ``data_0``, initializers ``<layer>_w_0`` / ``<layer>_b_0``, the final ``Softmax`` left out
    so that the output is the logits ``loss3/classifier_1``)."""
    import onnx
    from onnx import helper, numpy_helper

    nodes, inits = [], []
    names = {"data": "data_0"}
    for layer in layers:
        if layer.type in ("Input", "Softmax"):
            continue
        x = [names[b] for b in layer.bottom]
        out = f"{layer.top[0]}_{len(nodes) + 1}"
        if layer.type in ("Convolution", "InnerProduct"):
            w, b = (np.asarray(a, np.float32) for a in weights[layer.name])
            inits += [numpy_helper.from_array(w, f"{layer.name}_w_0"), numpy_helper.from_array(b, f"{layer.name}_b_0")]
        if layer.type == "Convolution":
            p = layer.convolution_param
            k, s, pad = p.kernel_size[0], (p.stride or [1])[0], (p.pad or [0])[0]
            nodes.append(helper.make_node("Conv", x + [f"{layer.name}_w_0", f"{layer.name}_b_0"], [out],
                                          kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4))
        elif layer.type == "InnerProduct":
            flat = f"{out}_flat"
            nodes.append(helper.make_node("Flatten", x, [flat], axis=1))
            nodes.append(helper.make_node("Gemm", [flat, f"{layer.name}_w_0", f"{layer.name}_b_0"], [out], transB=1))
        elif layer.type == "ReLU":
            nodes.append(helper.make_node("Relu", x, [out]))
        elif layer.type == "Pooling":
            p = layer.pooling_param
            op = "MaxPool" if p.pool == 0 else "AveragePool"
            nodes.append(helper.make_node(op, x, [out], kernel_shape=[p.kernel_size] * 2, strides=[p.stride] * 2,
                                          pads=[p.pad] * 4, ceil_mode=1))
        elif layer.type == "LRN":
            p = layer.lrn_param
            nodes.append(helper.make_node("LRN", x, [out], size=p.local_size, alpha=p.alpha, beta=p.beta, bias=p.k))
        elif layer.type == "Concat":
            nodes.append(helper.make_node("Concat", x, [out], axis=1))
        elif layer.type == "Dropout":
            nodes.append(helper.make_node("Identity", x, [out]))
        else:
            raise ValueError(f"no ONNX rule for {layer.type}")
        names[layer.top[0]] = out
    graph = helper.make_graph(
        nodes, "googlenet", [helper.make_tensor_value_info("data_0", onnx.TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(names["loss3/classifier"], onnx.TensorProto.FLOAT, ["N", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="test")
    onnx.save(model, str(path))
