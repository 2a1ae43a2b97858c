"""Shared fixtures: the repository root, and the real data in ../shared/data (skipped when absent)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} does not exist (a clone without ../shared)")
    return SHARED_DATA


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="run the whole suite, the tests marked slow included (what `make test` and CI run)")


def pytest_collection_modifyitems(config, items):
    """Without --full, the tests marked ``slow`` (end-to-end tool runs in subprocesses) are skipped, so
    that the default run is a quick check while working; ``make test`` and CI run everything."""
    if config.getoption("--full"):
        # the slow tests first: with several workers (make test: pytest-xdist --dist worksteal) the idle
        # workers take them over, and the last minutes are not one long test running while the others wait
        # (785 tests on 2 cores, 2026-12-05: 6 min 15 s; in collection order 7 min 16 s; slow first under
        # --dist load, which hands them all to one worker, 8 min 57 s)
        items.sort(key=lambda item: "slow" not in item.keywords)
        return
    skip = pytest.mark.skip(reason="slow: part of the full suite (pytest --full, make test)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# The own-data one-command tests (test_own_dataset.py, test_yolo.py): every trainer one epoch of two steps
# on a width-0.125 network at 64 pixels, so that the whole chain runs in about a minute.
TINY_RUN = [
    "members=1", "draw_images=2",
    "stage_overrides=['device=cpu','num_workers=0','model.width=0.125']",
    "tool_overrides.train_cls=['epochs=1','max_steps_per_epoch=2','batch_size=4','crop_size=64']",
    "tool_overrides.train_multibox=['epochs=1','max_steps_per_epoch=2','batch_size=4','multibox.input_size=64',"
    "'multibox.num_priors=10','multibox.grid=2','evaluation.batch_size=4']",
    "tool_overrides.train_region=['epochs=1','max_steps_per_epoch=2','images_per_batch=2','regions_per_image=8',"
    "'crop_size=64','context=4','evaluation.images=2']",
]
