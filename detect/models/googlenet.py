"""GoogLeNet (Inception v1), exactly as Table 1 of Szegedy et al., "Going deeper with convolutions".

The network, top to bottom at a 224x224 input (Table 1)::

    conv1      7x7/2, 64                        112x112x64
    maxpool1   3x3/2 (ceil) -> LRN              56x56x64
    conv2      1x1, 64                          56x56x64
    conv3      3x3, 192 -> LRN                  56x56x192
    maxpool2   3x3/2                            28x28x192
    inception 3a, 3b                            28x28x256, 28x28x480
    maxpool3   3x3/2                            14x14x480
    inception 4a .. 4e                          14x14x512, 512, 512, 528, 832
    maxpool4   3x3/2                            7x7x832
    inception 5a, 5b                            7x7x832, 7x7x1024
    avgpool    global (= 7x7 at 224) -> dropout 0.4 -> fc

Each inception module concatenates four branches (module names as in torchvision, so that state
dict keys coincide when the options match): ``branch1`` 1x1; ``branch2`` 1x1 reduce -> 3x3;
``branch3`` 1x1 reduce -> 5x5 (3x3 in torchvision's port, ``five_by_five=False``); ``branch4``
3x3/1 max pool -> 1x1 pool projection. Every convolution, reductions and projections included, is
followed by a ReLU (and by BatchNorm before it when ``batch_norm=True``, as torchvision places it).

Auxiliary heads on 4a and 4d (training only): 5x5/3 average pool (14x14 -> 4x4; other map sizes
fall back to an adaptive pool to 4x4), 1x1 conv 128 + ReLU, FC 1024 + ReLU, dropout 0.7, linear.

Counting notes (checked in tests/test_googlenet.py): the convolution and linear weights of the main
network (no biases, no auxiliary heads, 1000 classes) number 6,990,272, and the multiply-adds at
224x224 are about 1.58 G. Table 1's params column disagrees with its own filter counts in a few
rows: e.g. 4c has 512*128 + 512*128 + 128*256*9 + 512*24 + 24*64*25 + 512*64 = 509,440 weights
(497.5 K) against the printed 463 K; and its ops column sums to about 1.5 G.

Inputs: float ``Tensor[B, 3, H, W]``, any H, W >= 96 (small CPU configs warp crops to 96 or 112), prepared
by the model's ``input_convention`` (:mod:`detect.models.convention`), a field of :class:`GoogLeNetConfig`
and so of the ``model_kwargs`` every file records. Loading weights: :mod:`detect.models.weights`.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detect.limits import check_bound, dataclass_from_file
from detect.models.convention import IMAGENET_MEAN, IMAGENET_STD, InputConvention

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "InputConvention", "GoogLeNet", "GoogLeNetConfig", "GoogLeNetOutputs",
           "googlenet_torchvision"]

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux1", "aux2"])

# Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) of each inception module.
INCEPTION_TABLE = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


@dataclass(frozen=True)
class GoogLeNetConfig:
    """The architecture of a GoogLeNet, checked when built (``ValueError`` naming the field).

    num_classes: size of the classifier (1000 for ImageNet, 201 for a region classifier).
    aux_logits: build the two auxiliary heads (used in training mode only).
    batch_norm: BatchNorm after every conv (conv -> bn -> relu, eps 0.001, conv without bias).
    width: multiplies every channel count (rounded, at least 8).
    five_by_five: real 5x5 convs in the "5x5" branch (False: 3x3, as torchvision's port).
    lrn: local response normalisation after maxpool1 and conv3 (size 5, alpha 1e-4, beta 0.75).
    dropout, aux_dropout: dropout before the classifier / in the auxiliary heads.
    transform_input: convert ImageNet-normalised input to the (x - 0.5) / 0.5 scale of
        torchvision's ported weights (exactly as torchvision does).
    aux_pool: "paper" (5x5/3 average pool) or "adaptive" (torchvision's adaptive 4x4).
    pool4_size: kernel of maxpool4 (3 as in the paper; 2 in torchvision's port).
    input_convention: the input the weights expect (``InputConvention`` or its ``to_dict()``;
        None = ImageNet mean/std on RGB 0..1). Loading weights sets it (``load_pretrained``); it
        does not change the forward pass: callers prepare inputs with ``input_convention.normalize``.
    """

    num_classes: int = 1000
    aux_logits: bool = True
    batch_norm: bool = False
    width: float = 1.0
    five_by_five: bool = True
    lrn: bool = True
    dropout: float = 0.4
    aux_dropout: float = 0.7
    transform_input: bool = False
    aux_pool: str = "paper"
    pool4_size: int = 3
    input_convention: InputConvention | None = None

    def __post_init__(self):
        for name in ("num_classes", "width"):  # bounded before anything is allocated (detect/limits.py)
            check_bound(getattr(self, name), name, "GoogLeNet")
        flags = ("aux_logits", "batch_norm", "five_by_five", "lrn", "transform_input")
        checks = [(isinstance(self.num_classes, int), "num_classes is an integer"),
                  (all(isinstance(getattr(self, f), bool) for f in flags), f"{', '.join(flags)} are true or false"),
                  (all(isinstance(p, (int, float)) and 0 <= p <= 1 for p in (self.dropout, self.aux_dropout)),
                   "0 <= dropout, aux_dropout <= 1"),
                  (self.aux_pool in ("paper", "adaptive"), "aux_pool is 'paper' or 'adaptive'"),
                  (self.pool4_size in (1, 2, 3) and not isinstance(self.pool4_size, bool), "pool4_size in 1, 2, 3")]
        for ok, rule in checks:
            if not ok:
                raise ValueError(f"GoogLeNet: need {rule} ({self})")
        object.__setattr__(self, "input_convention", InputConvention.from_dict(self.input_convention))

    @classmethod
    def from_kwargs(cls, kwargs: object, source: str) -> "GoogLeNetConfig":
        """The config a file's ``model_kwargs`` describe: ``ValueError`` naming ``source`` when it is not a
        mapping, names anything but a field (a file's contents choose no code) or a value out of range."""
        return dataclass_from_file(cls, kwargs, source, "model_kwargs")


class ConvReLU(nn.Module):
    """Conv -> (BatchNorm, eps 0.001) -> ReLU. With BatchNorm the conv has no bias (torchvision's layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, batch_norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True)


class LocalResponseNorm(nn.Module):
    """Cross-channel LRN, ``x / (k + alpha / size * sum of x^2 over size neighbouring channels)^beta``,
    as ``nn.LocalResponseNorm`` (and Caffe). On channels-last input the channel sum is a 1-D average
    pool over the contiguous channel axis, faster on CPU than torch's 3-D pool; other input
    goes through ``F.local_response_norm``. [B, C, H, W] -> [B, C, H, W], same memory format.

    Under ONNX export (``onnx_form``) the channel window sum is a fixed banded 1x1 convolution (it stays in
    ORT's blocked NCHWc layout) and, for beta = 0.75, ``d^-0.75`` is ``1 / (sqrt(d) * sqrt(sqrt(d)))``
    instead of ``Pow``: on the project's CPU, faster than the traced ``F.local_response_norm`` and than
    ONNX's ``LRN`` (figures: benchmarks/README.md, ``bench_scoring.py --lrn-traced``).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        if size % 2 != 1:
            raise ValueError(f"LRN size must be odd, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def onnx_form(self, x: Tensor) -> Tensor:
        """The same function in export-friendly operators (see the class docstring); NCHW in and out."""
        c, half = int(x.shape[1]), self.size // 2
        idx = torch.arange(c)
        band = ((idx[:, None] - idx[None, :]).abs() <= half).to(x.dtype) * (self.alpha / self.size)
        d = F.conv2d(x * x, band[:, :, None, None], torch.full((c,), self.k, dtype=x.dtype))  # k as the bias
        if self.beta == 0.75:
            r = d.sqrt()
            return x / (r * r.sqrt())
        return x * d.pow(-self.beta)

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            return self.onnx_form(x)
        if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        b, c, h, w = x.shape
        nhwc = x.permute(0, 2, 3, 1)  # a contiguous view of channels-last memory
        mean_sq = F.avg_pool1d((nhwc * nhwc).reshape(b * h * w, 1, c), self.size, stride=1,
                               padding=self.size // 2, count_include_pad=True).reshape(b, h, w, c)
        return (nhwc * (mean_sq * self.alpha + self.k).pow(-self.beta)).permute(0, 3, 1, 2)


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: [B, C_in, H, W] -> [B, out_channels, H, W]."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, batch_norm: bool = False, five_by_five: bool = True):
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> ConvReLU:  # "same" padding
            return ConvReLU(cin, cout, k, padding=k // 2, batch_norm=batch_norm)

        self.branch1 = conv(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(conv(in_channels, ch3x3red, 1), conv(ch3x3red, ch3x3, 3))
        self.branch3 = nn.Sequential(conv(in_channels, ch5x5red, 1), conv(ch5x5red, ch5x5, 5 if five_by_five else 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     conv(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: [B, C, H, W] (14x14 at a 224 input) -> logits [B, num_classes]. ``pool="paper"``:
    5x5/3 average pool when it gives 4x4 (maps 14..16), else adaptive; ``"adaptive"``: always adaptive to 4x4."""

    def __init__(self, in_channels: int, num_classes: int, conv_channels: int = 128, hidden: int = 1024,
                 dropout: float = 0.7, batch_norm: bool = False, pool: str = "paper"):
        super().__init__()
        self.pool = pool  # checked by GoogLeNetConfig
        self.conv = ConvReLU(in_channels, conv_channels, 1, batch_norm=batch_norm)
        self.fc1 = nn.Linear(conv_channels * 16, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool == "paper" and 14 <= x.shape[-2] <= 16 and 14 <= x.shape[-1] <= 16:
            x = F.avg_pool2d(x, kernel_size=5, stride=3)
        else:
            x = F.adaptive_avg_pool2d(x, (4, 4))
        x = torch.flatten(self.conv(x), 1)  # [B, conv_channels * 16]
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


class GoogLeNet(nn.Module):
    """Inception v1 (Table 1), with options for torchvision's port and small CPU configs.

    ``GoogLeNet(config)`` or ``GoogLeNet(**fields)`` (what conf/model/*.yaml instantiate), or both: the
    fields override the config's (:class:`GoogLeNetConfig`). init_weights: truncated-normal init (see
    ``_init_weights``); False leaves PyTorch's defaults (weights to be loaded).

    ``forward(x: Tensor[B, 3, H, W] float) -> Tensor[B, num_classes]`` in eval mode (or without aux
    heads), ``GoogLeNetOutputs(logits, aux1, aux2)`` in training mode with aux heads.
    """

    def __init__(self, config: GoogLeNetConfig | None = None, init_weights: bool = True, **fields):
        super().__init__()
        self.config = c = replace(config or GoogLeNetConfig(), **fields)
        self.aux_logits = c.aux_logits

        def ch(n: int) -> int:
            return max(8, int(round(n * c.width)))

        def conv(cin: int, cout: int, k: int, **kw) -> ConvReLU:
            return ConvReLU(cin, cout, k, batch_norm=c.batch_norm, **kw)

        self.conv1 = conv(3, ch(64), 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = LocalResponseNorm() if c.lrn else nn.Identity()  # the paper's constants: the defaults
        self.conv2 = conv(ch(64), ch(64), 1)
        self.conv3 = conv(ch(64), ch(192), 3, padding=1)
        self.lrn2 = LocalResponseNorm() if c.lrn else nn.Identity()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        cin, pools = ch(192), {"3b": ("maxpool3", 3), "4e": ("maxpool4", c.pool4_size)}  # Table 1's 3x3/2 pools
        for name, widths in INCEPTION_TABLE.items():  # registered in Table 1's order (state dict keys, init draws)
            module = Inception(cin, *map(ch, widths), batch_norm=c.batch_norm, five_by_five=c.five_by_five)
            setattr(self, f"inception{name}", module)
            cin = module.out_channels
            if name in pools:
                setattr(self, pools[name][0], nn.MaxPool2d(pools[name][1], stride=2, ceil_mode=True))
        self.feature_dim = cin

        if c.aux_logits:
            aux = dict(conv_channels=ch(128), hidden=ch(1024), dropout=c.aux_dropout, batch_norm=c.batch_norm,
                       pool=c.aux_pool)
            self.aux1 = InceptionAux(self.inception4a.out_channels, c.num_classes, **aux)
            self.aux2 = InceptionAux(self.inception4d.out_channels, c.num_classes, **aux)
        else:
            self.aux1 = self.aux2 = None

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(c.dropout)
        self.fc = nn.Linear(self.feature_dim, c.num_classes)

        if init_weights:
            self._init_weights()

    @property
    def input_convention(self) -> InputConvention:
        """The input the weights expect (``config.input_convention``)."""
        return self.config.input_convention

    @property
    def model_kwargs(self) -> dict:
        """The config as plain values (``weights_only`` loadable), as checkpoints and detector files store it."""
        c = self.config
        return {**{f.name: getattr(c, f.name) for f in fields(c)}, "input_convention": c.input_convention.to_dict()}

    def set_input_convention(self, convention: InputConvention | dict | None) -> None:
        """Record the input the (newly loaded) weights expect, in ``config``."""
        self.config = replace(self.config, input_convention=InputConvention.from_dict(convention))

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Truncated-normal weights (``_trunc_normal_``) of std sqrt(2 / fan_in) in hidden layers, so that the
        22-layer network without BatchNorm starts with activations that neither vanish nor explode
        (torchvision's 0.01 everywhere makes them vanish), of std 0.01 in the classifiers (fc, aux fc2)."""
        classifiers = {self.fc} | ({self.aux1.fc2, self.aux2.fc2} if self.aux_logits else set())
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                std = 0.01 if m in classifiers else (2.0 / m.weight[0].numel()) ** 0.5
                _trunc_normal_(m.weight, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _transform_input(self, x: Tensor) -> Tensor:
        """ImageNet-normalised input -> the (x - 0.5) / 0.5 scale of torchvision's ported weights."""
        if not self.config.transform_input:
            return x
        scale = torch.tensor([s / 0.5 for s in IMAGENET_STD], dtype=x.dtype, device=x.device).view(3, 1, 1)
        shift = torch.tensor([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], dtype=x.dtype, device=x.device).view(3, 1, 1)
        return x * scale + shift

    def _trunk(self, x: Tensor, with_aux: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """[B, 3, H, W] -> (5b map [B, feature_dim, H/32, W/32], aux1 logits or None, aux2 logits or None)."""
        x = self._transform_input(x)
        x = self.lrn1(self.maxpool1(self.conv1(x)))           # [B, 64, 56, 56] at 224
        x = self.maxpool2(self.lrn2(self.conv3(self.conv2(x))))  # [B, 192, 28, 28]
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # [B, 480, 14, 14]
        x = self.inception4a(x)                                # [B, 512, 14, 14]
        aux1 = self.aux1(x) if with_aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # [B, 528, 14, 14]
        aux2 = self.aux2(x) if with_aux else None
        x = self.maxpool4(self.inception4e(x))                # [B, 832, 7, 7]
        x = self.inception5b(self.inception5a(x))              # [B, 1024, 7, 7]
        return x, aux1, aux2

    def forward_features(self, x: Tensor) -> Tensor:
        """Inception 5b map: [B, 3, H, W] -> [B, feature_dim, h, w]: 7x7 at 224, 3x3 at 96 and 112
        (conv1 halves rounding up, then four 3x3/2 ceil-mode pools: n -> ceil((n - 3) / 2) + 1)."""
        return self._trunk(x, with_aux=False)[0]

    def embed(self, x: Tensor) -> Tensor:
        """Pooled 5b features before dropout: [B, 3, H, W] -> [B, feature_dim] float."""
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        with_aux = self.training and self.aux_logits
        x, aux1, aux2 = self._trunk(x, with_aux)
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))  # [B, num_classes]
        return GoogLeNetOutputs(logits, aux1, aux2) if with_aux else logits


def _trunc_normal_(weight: Tensor, std: float) -> None:
    """Fill ``weight`` in place from N(0, std^2) truncated to [-2 std, 2 std]: one normal draw, then redraw
    only the values outside (4.6% of them, then 4.6% of those, ...), faster than the inverse-CDF of
    ``nn.init.trunc_normal_`` at this cut-off."""
    flat = weight.view(-1)  # a freshly built parameter is contiguous
    flat.normal_(0.0, std)
    idx = (flat.abs() > 2 * std).nonzero().squeeze(1)
    while idx.numel():
        redraw = torch.randn(idx.numel(), dtype=weight.dtype, device=weight.device) * std
        flat[idx] = redraw
        idx = idx[redraw.abs() > 2 * std]


def googlenet_torchvision(**overrides) -> GoogLeNet:
    """The layout of ``torchvision.models.googlenet`` (a torchvision state dict loads into it strictly);
    ``overrides`` are GoogLeNet kwargs (e.g. ``num_classes=201, transform_input=True``)."""
    config = GoogLeNetConfig(batch_norm=True, five_by_five=False, lrn=False, aux_pool="adaptive", pool4_size=2,
                             dropout=0.2)
    return GoogLeNet(config, **overrides)
