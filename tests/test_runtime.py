"""The `threads` setting: resolution, application, and its registration for every tool."""
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from detect.runtime import ThreadsCallback, resolve_threads, usable_cores

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_auto_is_the_processs_share_of_the_cores_less_one_for_its_helpers():
    assert resolve_threads("auto", cores=16, env={}) == 15
    assert resolve_threads("auto", cores=16, env={"LOCAL_WORLD_SIZE": "4"}) == 3
    assert resolve_threads("auto", cores=2, env={}) == 1  # the 2-core machine: 1 (benchmarks/threads.md)
    assert resolve_threads("auto", cores=2, env={"LOCAL_WORLD_SIZE": "4"}) == 1  # never 0
    assert resolve_threads("auto", cores=6, env={"LOCAL_WORLD_SIZE": "4"}) == 1
    assert resolve_threads("auto", env={}) == max(1, usable_cores() - 1)
    assert resolve_threads(3) == 3 and resolve_threads("2") == 2
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(ValueError, match="threads="):
            resolve_threads(bad)


def test_callback_applies_the_setting_and_stops_on_a_bad_one(monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENCV_FOR_THREADS_NUM"):  # restored after the test
        monkeypatch.delenv(name, raising=False)
    before_torch, before_cv = torch.get_num_threads(), cv2.getNumThreads()
    try:
        ThreadsCallback().on_job_start(config=OmegaConf.create({"threads": 1}))
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
        with pytest.raises(SystemExit, match="threads=0"):  # Hydra would only warn about a ValueError
            ThreadsCallback().on_job_start(config=OmegaConf.create({"threads": 0}))
    finally:
        torch.set_num_threads(before_torch)
        cv2.setNumThreads(before_cv)


def test_applied_before_torch_loads_without_loading_it():
    """The evaluation tools never import torch: the setting reaches torch and OpenCV when they load."""
    code = ("import sys; from detect.runtime import apply_threads; apply_threads(1); "
            "assert 'torch' not in sys.modules and 'cv2' not in sys.modules; "
            "import torch, cv2; print(torch.get_num_threads(), cv2.getNumThreads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")}
    env["PYTHONPATH"] = str(CONF.parent)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


TOOL_CONFIGS = sorted({m for path in (CONF.parent / "tools").glob("*.py") if path.is_file()
                       for m in re.findall(r'config_name="(\w+)"', path.read_text())})


def test_every_tool_config_is_found():
    assert "train_cls" in TOOL_CONFIGS and "eval_map" in TOOL_CONFIGS and "training" not in TOOL_CONFIGS


@pytest.mark.parametrize("tool", TOOL_CONFIGS)
def test_every_tool_registers_the_callback(tool):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(tool, return_hydra_config=True)
    assert cfg.threads == "auto"
    assert cfg.hydra.callbacks.threads._target_ == "detect.runtime.ThreadsCallback"
