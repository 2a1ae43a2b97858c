"""The GPU check (benchmarks/gpu_check.sh and .py): its dry run exercises every section on the CPU and
writes the report; goals are judged only on a real GPU; a failing section is recorded, not fatal."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_check


def _documented_commands(repo_root) -> list[str]:
    """Every `bash benchmarks/gpu_check.sh ...` line the docs print (README, benchmarks/*.md, the script's
    own docstring), without trailing comments."""
    found = []
    for doc in [repo_root / "README.md", *sorted((repo_root / "benchmarks").glob("*.md")),
                repo_root / "benchmarks" / "gpu_check.py"]:
        for line in doc.read_text().splitlines():
            line = line.strip().strip("`")
            if line.startswith("bash benchmarks/gpu_check.sh") and "[" not in line:
                found.append(line.split("#")[0].strip())
    return sorted(set(found))


def _run_documented(command: str, cwd, repo_root) -> subprocess.CompletedProcess:
    """Run a documented command as written (from the caller's folder ``cwd``, so relative report paths
    land there), the script resolved in the repository."""
    args = command.split()[1:]
    args[0] = str(repo_root / args[0])
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


def test_the_docs_print_a_dry_run_and_a_gpu_command(repo_root):
    commands = _documented_commands(repo_root)
    assert "bash benchmarks/gpu_check.sh --dry-run" in commands
    assert any("--dry-run" not in c for c in commands)


@pytest.mark.slow
def test_dry_run_as_documented_exercises_every_section_and_writes_the_report(tmp_path, repo_root):
    proc = _run_documented("bash benchmarks/gpu_check.sh --dry-run", tmp_path, repo_root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())  # the default, beside the caller
    s = report["sections"]
    assert report["dry_run"] and not report["errors"] and report["goals"]["evaluated"] is False
    assert s["train_step"]["images_per_s"] > 0 and s["train_step"]["aux_heads"]
    assert s["ddp"]["backend"] == "gloo" and s["ddp"]["world_size"] == 1 and s["ddp"]["all_reduce"] == 1.0
    batches = [str(b) for b in gpu_check.DRY["batches"]]
    for mode in ("eager_fp32", "eager_bf16", "compile_bf16"):
        assert sorted(s["scoring"][mode]) == sorted(batches)
        assert all(s["scoring"][mode][b]["crops_per_s"] > 0 for b in batches)
    det = s["detection"]
    for key in ("1_member", "6_members", "6_members_cascade"):
        assert det[key]["s_per_image"] > 0
    assert 0 < det["cascade_pass"] < 1 and det["proposals"] == gpu_check.DRY["proposals"]
    assert s["memory"]["peak_rss_gib"] > 0


@pytest.mark.slow  # runs a benchmark script
def test_every_documented_gpu_command_parses_up_to_the_gpu_refusal(tmp_path, repo_root):
    """The GPU commands cannot run here, but their flags must reach gpu_check.py intact: it then stops
    with its own 'no GPU' message, not an argument error."""
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is present: the documented command would run the whole check")
    for command in (c for c in _documented_commands(repo_root) if "--dry-run" not in c):
        proc = _run_documented(command, tmp_path, repo_root)
        assert proc.returncode != 0 and "--dry-run" in proc.stderr and "usage:" not in proc.stderr, command


@pytest.mark.parametrize("argv", [["--dry-run", "--out", "sub/r.json"], ["--out=sub/r.json", "--dry-run"],
                                  ["sub/r.json", "--dry-run"], ["--dry-run", "sub/r.json"],
                                  ["--sections", "ddp", "train_step", "--dry-run", "--out", "sub/r.json"]])
def test_flags_in_any_order_reach_the_check(tmp_path, repo_root, argv):
    fake = tmp_path / "fake_python"
    fake.write_text('#!/bin/sh\nshift\necho "$@"\n')
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(repo_root / "benchmarks" / "gpu_check.sh"), *argv], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": str(fake)}, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split()
    assert args[args.index("--out") + 1] == str(tmp_path / "sub" / "r.json") and "--dry-run" in args
    if "--sections" in argv:
        assert args[args.index("--sections"):args.index("--sections") + 3] == ["--sections", "ddp", "train_step"]


def test_goals_are_judged_from_the_best_bf16_batch_and_six_members():
    def report(crops, seconds):
        return {"sections": {"scoring": {"eager_fp32": {"64": {"crops_per_s": 9e9}},
                                         "eager_bf16": {"64": {"crops_per_s": crops}, "256": "skipped: time budget spent"},
                                         "compile_bf16": {"64": {"crops_per_s": crops / 2}}},
                             "detection": {"6_members": {"s_per_image": seconds}, "1_member": {"s_per_image": 0.01}}}}

    good = gpu_check.goals(report(4100.0, 0.9), dry_run=False)
    assert good["crops_per_s_bf16"]["met"] and good["s_per_image_6_members"]["met"]
    bad = gpu_check.goals(report(3900.0, 1.2), dry_run=False)  # fp32's 9e9 does not count, nor 1 member's time
    assert not bad["crops_per_s_bf16"]["met"] and not bad["s_per_image_6_members"]["met"]
    assert bad["crops_per_s_bf16"]["measured"] == 3900.0
    missing = gpu_check.goals({"sections": {}}, dry_run=False)
    assert missing["crops_per_s_bf16"]["met"] is False and missing["s_per_image_6_members"]["measured"] is None


@pytest.mark.slow  # runs a benchmark script
def test_a_failing_section_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    def broken(s, device):
        raise RuntimeError("no kernel image for this GPU")

    monkeypatch.setattr(gpu_check, "train_step", broken)
    report = gpu_check.run(True, tmp_path / "r.json", ["train_step", "detection"])
    assert "no kernel image" in report["errors"]["train_step"] and "train_step" not in report["sections"]
    assert report["sections"]["detection"]["1_member"]["s_per_image"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["errors"].keys() == {"train_step"}


def test_refuses_to_run_without_a_gpu_unless_dry(tmp_path):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="--dry-run"):
        gpu_check.run(False, tmp_path / "r.json")
