"""Region classification as in R-CNN: warp each proposal into a fixed-size crop, label it against the
ground truth and sample R-CNN mini-batches (scoring them at detection time: :mod:`detect.scoring`).

Labels put background at label 0 and class ``c`` at ``c + 1``; crops follow their reader's input convention
(:func:`warp_regions`).
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info
from torchvision import ops

from detect.boxes import flip_boxes
from detect.data.classification import ClassificationBatch
from detect.data.images import SampleError, read_image
from detect.data.records import DetectionRecord, SkippedItem
from detect.models.convention import InputConvention

log = logging.getLogger(__name__)

__all__ = ["normalize_image", "warp_regions", "assign_region_labels", "add_ground_truth", "best_gt_overlaps",
           "sample_regions", "RegionDataset", "collate_regions"]


def normalize_image(image: np.ndarray, convention: InputConvention | None = None,
                    device: str | torch.device = "cpu") -> Tensor:
    """``ndarray[H, W, 3] uint8`` RGB -> ``Tensor[3, H, W] float32`` prepared with ``convention``
    (``InputConvention.normalize``; None = ImageNet: ``(x / 255 - mean) / std``) on ``device``."""
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:  # torch refuses to wrap read-only memory (PIL-backed arrays)
        image = image.copy()
    return InputConvention.from_dict(convention).normalize(torch.from_numpy(image).to(device).permute(2, 0, 1))


def context_boxes(boxes: Tensor, size: int, context: int) -> Tensor:
    """Dilate ``boxes: Tensor[N, 4]`` xyxy about their centres by ``size / (size - 2 * context)``, so that a
    ``size x size`` warp of the result shows ``context`` output pixels around the original box."""
    if size <= 2 * context:
        raise ValueError(f"context {context} leaves no room in a {size}-pixel crop")
    scale = size / (size - 2 * context)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
    return torch.cat([centre - half, centre + half], dim=1)


def warp_regions(image: Tensor, boxes: Tensor, size: int = 224, context: int = 16) -> Tensor:
    """R-CNN's "warp" crops of all proposals of one image in one batched call.

    image: Tensor[3, H, W] float, prepared with an input convention (so zero is its mean colour), on any device
    boxes: Tensor[N, 4] float, xyxy pixels of ``image``
    returns Tensor[N, 3, size, size] on the image's device and dtype.

    Each box is dilated by :func:`context_boxes` and scaled anisotropically to ``size x size`` with
    plain bilinear sampling (no antialiasing, as R-CNN's ``imresize(..., 'antialiasing', false)``):
    output pixel ``(i, j)`` samples the image at ``x1 + (j + 0.5) * w / size`` in continuous
    coordinates (pixel ``k`` covers ``[k, k + 1)``). Samples outside the image blend with zeros (the mean
    colour of its convention), as if it were embedded in an infinite zero plane. One ``grid_sample`` over the
    image expanded (not copied) to the batch: faster on the CPU than ``roi_align`` (benchmarks/README.md).
    """
    if image.ndim != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    boxes = boxes.to(device=image.device, dtype=image.dtype).reshape(-1, 4)
    n = len(boxes)
    if n == 0:
        return image.new_zeros((0, image.shape[0], size, size))
    height, width = image.shape[1:]
    rois = context_boxes(boxes, size, context)
    steps = (torch.arange(size, device=image.device, dtype=image.dtype) + 0.5) / size
    # continuous sample coordinates mapped to grid_sample's [-1, 1] (align_corners=False: -1 and 1
    # are the outer edges of the border pixels, so u = 2 x / W - 1 for continuous x)
    u = (rois[:, 0:1] + steps * (rois[:, 2:3] - rois[:, 0:1])) * (2.0 / width) - 1.0
    v = (rois[:, 1:2] + steps * (rois[:, 3:4] - rois[:, 1:2])) * (2.0 / height) - 1.0
    grid = torch.stack([u[:, None, :].expand(n, size, size), v[:, :, None].expand(n, size, size)], dim=-1)
    return torch.nn.functional.grid_sample(image[None].expand(n, -1, -1, -1), grid, mode="bilinear",
                                           padding_mode="zeros", align_corners=False)


def assign_region_labels(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                         gt_ignore: Tensor | None = None, fg_iou: float = 0.5) -> Tensor:
    """Training label of each proposal.

    proposals: Tensor[N, 4], gt_boxes: Tensor[G, 4] xyxy; gt_labels: Tensor[G] int64 (0-based classes);
    gt_ignore: Tensor[G] bool (crowd / difficult) or None.
    returns Tensor[N] int64: ``class + 1`` of the best-overlapping (non-ignored) ground truth when that
    IoU is ``>= fg_iou``; 0 (background) below; -1 (unused) for a background proposal that overlaps an
    ignored box by ``>= fg_iou`` (it is neither a positive nor a trustworthy negative)."""
    n = len(proposals)
    labels = torch.zeros(n, dtype=torch.int64)
    if len(gt_boxes) == 0 or n == 0:
        return labels
    ignore = torch.zeros(len(gt_boxes), dtype=torch.bool) if gt_ignore is None else gt_ignore.bool()
    iou = ops.box_iou(proposals.float(), gt_boxes.float())
    if (~ignore).any():
        best, arg = iou[:, ~ignore].max(dim=1)
        fg = best >= fg_iou
        labels[fg] = gt_labels[~ignore][arg[fg]].long() + 1
    if ignore.any():
        near_ignored = iou[:, ignore].max(dim=1).values >= fg_iou
        labels[near_ignored & (labels == 0)] = -1
    return labels


def add_ground_truth(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                     gt_ignore: Tensor | None = None, fg_iou: float = 0.5) -> tuple[Tensor, Tensor]:
    """Proposals plus the (non-ignored) ground-truth boxes, with labels from :func:`assign_region_labels`.

    returns (boxes Tensor[N + G', 4] float32, labels Tensor[N + G'] int64); the ground truth comes first."""
    keep = torch.ones(len(gt_boxes), dtype=torch.bool) if gt_ignore is None else ~gt_ignore.bool()
    boxes = torch.cat([gt_boxes[keep].float().reshape(-1, 4), proposals.float().reshape(-1, 4)])
    return boxes, assign_region_labels(boxes, gt_boxes, gt_labels, gt_ignore, fg_iou)


def best_gt_overlaps(boxes: Tensor, gt_boxes: Tensor, gt_ignore: Tensor | None = None) -> Tensor:
    """IoU of each box with its best-overlapping non-ignored ground truth: ``Tensor[N]`` (0 when none)."""
    keep = torch.ones(len(gt_boxes), dtype=torch.bool) if gt_ignore is None else ~gt_ignore.bool()
    if len(boxes) == 0 or not keep.any():
        return torch.zeros(len(boxes))
    return ops.box_iou(boxes.float(), gt_boxes[keep].float()).max(dim=1).values


def sample_regions(labels: Tensor, num: int, fg_fraction: float, rng: np.random.Generator,
                   hard: Tensor | None = None, hard_fraction: float = 0.0) -> Tensor:
    """Indices of ``num`` regions with ``round(num * fg_fraction)`` positives (R-CNN: 32 of 128).

    labels: Tensor[N] int64 (>0 positive, 0 background, -1 unused) -> Tensor[num] int64.
    hard: Tensor[N] bool marking "hard" backgrounds (e.g. IoU in [0.1, 0.5) with an object: parts of
    objects, near misses); ``hard_fraction`` of the background quota is drawn from them when there
    are any (R-CNN: 0, every background alike). When an image has too few positives the rest is
    background; a pool smaller than its quota is drawn with replacement (exactly ``num`` regions per
    image). Raises ``ValueError`` when there is no usable region at all.
    """
    labels = labels.cpu().numpy()
    fg = np.flatnonzero(labels > 0)
    bg = np.flatnonzero(labels == 0)
    if len(fg) == 0 and len(bg) == 0:
        raise ValueError("no usable regions to sample from")
    n_fg = 0 if len(fg) == 0 else num if len(bg) == 0 else min(int(round(num * fg_fraction)), num)
    n_bg = num - n_fg
    hard_bg = np.flatnonzero((labels == 0) & hard.cpu().numpy()) if hard is not None else bg[:0]
    n_hard = int(round(n_bg * hard_fraction)) if len(hard_bg) else 0
    picks = [rng.choice(pool, size=k, replace=len(pool) < k)
             for pool, k in ((fg, n_fg), (hard_bg, n_hard), (bg, n_bg - n_hard)) if k]
    return torch.from_numpy(np.concatenate(picks).astype(np.int64))


class RegionDataset(Dataset):
    """Training crops of one image per item: ``regions_per_image`` warped regions, a quarter positive.

    records: DetectionRecord list; proposals: ``image_id -> ndarray[N, 4]`` xyxy (e.g. ProposalStore.get;
    a missing entry means ground truth only); convention: the input convention of the network trained
    (its ``input_convention``; None = ImageNet). Item ``i`` -> ``(crops Tensor[R, 3, S, S] float32,
    labels Tensor[R] int64)``. Each draw flips the image horizontally with probability ``flip_prob``.
    Randomness comes from ``seed``, the item index and the DataLoader worker's seed (which changes
    every epoch when the loader has a seeded generator), so members with different seeds see
    different samples, reproducibly; ``resample=False`` draws the same regions every time.
    ``hard_bg_fraction`` of each background quota comes from proposals overlapping an object by IoU
    in ``[hard_bg_iou, fg_iou)`` (see :func:`sample_regions`; 0 = R-CNN's uniform backgrounds)."""

    def __init__(self, records: Sequence[DetectionRecord], proposals: Callable[[str], np.ndarray],
                 convention: InputConvention | None = None, regions_per_image: int = 64,
                 fg_fraction: float = 0.25, fg_iou: float = 0.5, crop_size: int = 224,
                 context: int = 16, flip_prob: float = 0.5, seed: int = 0, resample: bool = True,
                 hard_bg_fraction: float = 0.0, hard_bg_iou: float = 0.1):
        checks = [(crop_size >= 8, "crop_size must be >= 8"),
                  (0 <= context and 2 * context < crop_size, "context must be >= 0 and < crop_size / 2"),
                  (regions_per_image >= 1, "regions_per_image must be >= 1"),
                  (0 <= fg_fraction <= 1 and 0 <= hard_bg_fraction <= 1, "fg_fraction and hard_bg_fraction must be in [0, 1]"),
                  (0 < fg_iou <= 1 and 0 <= hard_bg_iou <= fg_iou, "need 0 <= hard_bg_iou <= fg_iou <= 1, fg_iou > 0"),
                  (0 <= flip_prob <= 1, "flip_prob must be in [0, 1]")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"region sampling settings: {message} (crop_size={crop_size}, context={context}, "
                                 f"regions_per_image={regions_per_image}, fg_fraction={fg_fraction}, fg_iou={fg_iou}, "
                                 f"hard_bg_fraction={hard_bg_fraction}, hard_bg_iou={hard_bg_iou}, flip_prob={flip_prob})")
        self.records, self.proposals, self.convention = list(records), proposals, InputConvention.from_dict(convention)
        self.regions_per_image, self.fg_fraction, self.fg_iou = regions_per_image, fg_fraction, fg_iou
        self.hard_bg_fraction, self.hard_bg_iou = hard_bg_fraction, hard_bg_iou
        self.crop_size, self.context, self.flip_prob = crop_size, context, flip_prob
        self.seed, self.resample, self._calls = seed, resample, 0

    def __len__(self) -> int:
        return len(self.records)

    def _rng(self, index: int) -> np.random.Generator:
        if not self.resample:  # the same regions every time (held-out evaluation)
            return np.random.default_rng([self.seed, index])
        info = get_worker_info()
        self._calls += 1
        stream = info.seed % (2**63) if info is not None else 0
        return np.random.default_rng([self.seed, index, stream, self._calls])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor] | SkippedItem:
        """The regions of image ``index``, or a :class:`SkippedItem` (logged) when the image cannot be used."""
        record = self.records[index]
        try:
            return self._regions(record, self._rng(index))
        except SampleError as e:  # an unreadable image, nothing to sample; the message names the file
            log.warning("skipped %s", e)
            return SkippedItem(str(record.path), str(e))

    def _regions(self, record: DetectionRecord, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        image = read_image(record.path, (record.width, record.height))
        height, width = image.shape[:2]
        try:
            proposals = np.asarray(self.proposals(record.image_id), dtype=np.float32).reshape(-1, 4)
        except KeyError:  # no entry: ground truth only
            proposals = np.zeros((0, 4), np.float32)
        gt_boxes, gt_ignore = torch.from_numpy(record.boxes), torch.from_numpy(record.ignore)
        boxes, labels = add_ground_truth(torch.from_numpy(proposals), gt_boxes, torch.from_numpy(record.labels),
                                         gt_ignore, self.fg_iou)
        hard = best_gt_overlaps(boxes, gt_boxes, gt_ignore) >= self.hard_bg_iou if self.hard_bg_fraction > 0 else None
        try:
            pick = sample_regions(labels, self.regions_per_image, self.fg_fraction, rng, hard, self.hard_bg_fraction)
        except ValueError:
            raise SampleError(f"{record.path}: no proposals or ground truth to sample regions from") from None
        boxes, labels = boxes[pick], labels[pick]
        if rng.random() < self.flip_prob:
            image = image[:, ::-1]
            boxes = flip_boxes(boxes, width)
        tensor = normalize_image(image, self.convention)
        if tensor.shape[1:] != (height, width):
            raise SampleError(f"{record.path}: unexpected decoded shape {tuple(tensor.shape)}")
        return warp_regions(tensor, boxes, self.crop_size, self.context), labels


def collate_regions(items: list[tuple[Tensor, Tensor] | SkippedItem]) -> ClassificationBatch:
    """Concatenate the regions of several images into one batch (crops as ``images``, labels ``0`` =
    background, ``c + 1`` = class ``c``); unusable images (:class:`SkippedItem`) are dropped and handed
    on in ``skipped``; a batch of nothing but those has no crops (the engine skips it and counts them).
    Train and evaluate as any classifier, with ``background=0`` (:mod:`detect.classify`)."""
    kept = [item for item in items if not isinstance(item, SkippedItem)]
    skipped = tuple(item for item in items if isinstance(item, SkippedItem))
    if not kept:
        return ClassificationBatch(torch.zeros(0, 3, 1, 1), torch.zeros(0, dtype=torch.long), len(skipped), skipped)
    crops, labels = zip(*kept)
    return ClassificationBatch(torch.cat(crops), torch.cat(labels), len(skipped), skipped)
