"""The demo's stage runner: finished stages are skipped only while their outputs are intact."""
import json

import pytest

from detect.stages import Stage, StageError, cost_lines, run_stages, tree_digest

WRITER = """
import sys, pathlib
work, name, log = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
with open(log, "a") as f:
    f.write(name + "\\n")
if (work / "fail").exists() and name == "second":
    sys.exit(3)
upstream = (work / "first.txt").read_text() if name == "second" else ""
(work / f"{name}.txt").write_text(upstream + name)
"""


@pytest.fixture
def setup(tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "write.py").write_text(WRITER)
    work, log = tmp_path / "work", tmp_path / "ran.log"
    work.mkdir()
    stages = [Stage(n, "write", [str(work), n, str(log)]) for n in ("first", "second")]

    def run(**kw):
        log.write_text("")
        run_stages(stages, work, tools, **kw)
        return log.read_text().split()

    return work, run


def test_skips_verified_stages_and_reruns_changed_ones(setup):
    work, run = setup
    assert run() == ["first", "second"]
    assert run() == []                                    # outputs verified: nothing runs
    (work / "second.txt").write_text("tampered")
    assert run() == ["second"]                            # a changed output re-runs its stage
    assert (work / "second.txt").read_text() == "firstsecond"
    (work / "first.txt").unlink()
    assert run() == ["first", "second"]                   # an upstream re-run re-runs what follows
    assert run(inputs_digest="other config") == ["first", "second"]
    stamp = json.loads((work / "stages" / "first.json").read_text())
    assert stamp["files"] == ["first.txt"] and stamp["complete"] and list(stamp["sha256"]) == ["first.txt"]


def test_failed_stage_raises_and_resumes_after_the_last_good_one(setup):
    work, run = setup
    (work / "fail").write_text("")
    with pytest.raises(StageError, match="stage second failed with exit code 3"):
        run()
    assert not (work / "stages" / "second.json").exists()
    (work / "fail").unlink()
    assert run() == ["second"]


def test_tree_digest_follows_contents(tmp_path):
    (tmp_path / "a.yaml").write_text("x: 1\n")
    before = tree_digest(tmp_path)
    (tmp_path / "a.yaml").write_text("x: 2\n")
    assert tree_digest(tmp_path) != before


def test_timings_of_run_and_skipped_stages_and_the_cost_lines(tmp_path):
    """run_stages reports each stage reached: seconds now, or those its stamp recorded when it is skipped;
    cost_lines says both (a demo's last lines)."""
    tools, work = tmp_path / "tools", tmp_path / "work"
    tools.mkdir()
    work.mkdir()
    (tools / "nap.py").write_text("import sys, time, pathlib\ntime.sleep(0.3)\npathlib.Path(sys.argv[1]).write_text('x')\n")
    stages = [Stage(n, "nap", [str(work / f"{n}.txt")]) for n in ("a", "b")]
    first = run_stages(stages, work, tools)
    assert list(first) == ["a", "b"] and all(r and 0.3 <= s < 30 for s, r in first.values())
    second = run_stages(stages, work, tools)
    assert second == {n: (first[n][0], False) for n in first}  # the recorded seconds, not a new timing
    head, per_stage = cost_lines(second, 90.0)
    assert head == f"cost: 1.5 min wall in this run (0 of 2 stages run; the skipped ones took " \
                   f"{(first['a'][0] + first['b'][0]) / 60:.1f} min when they ran)"
    assert per_stage == f"per stage: a {first['a'][0]:.0f} s (earlier), b {first['b'][0]:.0f} s (earlier)"
    assert cost_lines({"a": (12.4, True), "b": (float("nan"), False)}, 30.0) == [
        "cost: 0.5 min wall in this run (1 of 2 stages run; the skipped ones took 0.0 min when they ran)",
        "per stage: a 12 s, b ? s (earlier)"]

