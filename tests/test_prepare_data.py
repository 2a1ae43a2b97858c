"""tools/prepare_data.py: the class list it writes next to the outputs, never over a file of the user's."""
import importlib.util

import numpy as np
import pytest

from detect.classes import ClassList, read_class_list, write_class_list
from detect.data.records import DetectionDataset, DetectionRecord
from detect.io import OutputConflict


def _tool(repo_root):
    spec = importlib.util.spec_from_file_location("prepare_data_tool", repo_root / "tools" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_list_written_once_and_never_over_a_users_file(tmp_path, repo_root):
    tool = _tool(repo_root)
    classes, other = ClassList.from_names(["cat", "dog"]), ClassList.from_names(["owl"])
    path = tmp_path / "classes.tsv"
    tool.write_classes(classes, path)
    assert read_class_list(path) == classes
    tool.write_classes(other, path)  # its own file: replaced when the classes change
    assert read_class_list(path) == other

    users = tmp_path / "mine" / "classes.tsv"
    write_class_list(classes, users)  # a file of the user's with the same classes: left as it is
    before = users.read_bytes()
    tool.write_classes(classes, users)
    assert users.read_bytes() == before
    with pytest.raises(OutputConflict, match="not written by prepare_data"):
        tool.write_classes(other, users)  # other classes: refused, the file kept
    assert users.read_bytes() == before


def test_summary_counts_boxes_per_class_and_block(repo_root):
    tool = _tool(repo_root)
    classes = ClassList.from_names(["a", "b"])
    rec = lambda labels, ignore, k: DetectionRecord(str(k), f"/x/{k}.jpg", 9, 9, np.zeros((len(labels), 4)), labels,
                                                    ignore, k)
    train = DetectionDataset([rec([0, 1, 1], [False, False, True], 1), rec([], [], 2)], classes)
    val = DetectionDataset([rec([0], [False], 1)], classes)
    table = tool.summary({"train": train, "val": val}, classes).splitlines()
    assert table[1].split() == ["a", "1", "1"] and table[2].split() == ["b", "1", "0"]
    assert table[-3].split() == ["boxes", "2", "1"] and table[-2].split() == ["ignored", "1", "0"]
    assert table[-1].split() == ["images", "2", "1"]
