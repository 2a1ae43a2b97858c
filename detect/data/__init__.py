"""Dataset readers (each returns a :class:`DetectionDataset`) and the synthetic world.

Importing this package (and every reader) needs numpy, Pillow and defusedxml only, never torch: the
evaluation path (``tools/eval_map.py``) stays light.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from detect.data.coco import read_coco
from detect.data.folder import read_image_folder
from detect.data.ilsvrc import read_ilsvrc_det
from detect.data.records import DetectionDataset, DetectionRecord, SkipLog
from detect.data.voc import read_voc

__all__ = ["DetectionDataset", "DetectionRecord", "SkipLog", "read_coco", "read_dataset", "read_ilsvrc_det",
           "read_image_folder", "read_voc"]


def read_dataset(spec: Mapping[str, Any], **options) -> DetectionDataset:
    """Build the dataset a ``_target_`` block of ``conf/data/<name>.yaml`` describes, adding those of
    ``options`` (e.g. ``check_images=False``) the reader takes. The reader's own error (a missing folder,
    a wrong layout ...) is raised as it is, not wrapped in Hydra's ``InstantiationException``."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_method, instantiate

    params = inspect.signature(get_method(spec["_target_"])).parameters
    accepted = {k: v for k, v in options.items() if k in params}
    try:
        return instantiate(spec, **accepted)
    except InstantiationException as e:
        if isinstance(e.__cause__, (OSError, ValueError)):
            raise e.__cause__ from None
        raise
