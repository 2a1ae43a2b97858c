"""Dataset readers (each returns a :class:`DetectionDataset`) and the synthetic world."""
from __future__ import annotations

from detect.data.coco import read_coco
from detect.data.folder import read_image_folder
from detect.data.ilsvrc import read_ilsvrc_det
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog
from detect.data.voc import read_voc

__all__ = ["DetectionDataset", "DetectionRecord", "SkipLog", "READERS", "load_detection_dataset",
           "read_coco", "read_ilsvrc_det", "read_image_folder", "read_voc"]

READERS = {"ilsvrc": read_ilsvrc_det, "voc": read_voc, "coco": read_coco, "folder": read_image_folder}


def load_detection_dataset(format: str, **kwargs) -> DetectionDataset:
    """Read a dataset with the reader registered for ``format`` (``ilsvrc|voc|coco|folder``)."""
    try:
        reader = READERS[format]
    except KeyError:
        raise ValueError(f"unknown dataset format {format!r}; known: {sorted(READERS)}") from None
    return reader(**kwargs)
