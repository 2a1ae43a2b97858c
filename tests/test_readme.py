"""Every tool command in the README parses: its tool exists and its overrides compose with the configs.

(`make test` is what CI runs; `make demo` runs tools/demo.py, whose stages tests/test_stages.py and the
tool tests exercise.)
"""
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    variables, commands = {}, []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            m = re.match(r'^(\w+)="(.*)"$', line)
            if m:
                variables[m.group(1)] = m.group(2)
                continue
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            m = re.search(r"tools/(\w+)\.py(.*?)(;|$)", line)
            if m:
                commands.append((m.group(1), m.group(2).replace("$k", "0")))
    return commands


COMMANDS = _commands()


def _config_name(tool: str) -> str:
    """The config a tool composes (``@hydra.main(config_name=...)``; tools/detect_images.py: detect)."""
    return re.search(r'config_name="(\w+)"', (ROOT / "tools" / f"{tool}.py").read_text()).group(1)


def _parsed(value: str):
    """An override's value as Hydra parses it (numbers, booleans, lists, null)."""
    return OverridesParser.create().parse_override(f"k={value}").value()


def test_readme_has_the_tool_commands():
    tools = {tool for tool, _ in COMMANDS}
    assert {"detect_images", "train_cls", "train_multibox", "propose", "train_region", "detect_dataset", "eval_map"} <= tools


@pytest.mark.parametrize("tool, args", COMMANDS, ids=[f"{t}:{a.strip()[:40]}" for t, a in COMMANDS])
def test_readme_command_composes(tool, args):
    assert (ROOT / "tools" / f"{tool}.py").is_file()
    overrides = [a for a in shlex.split(args) if "=" in a and not a.startswith("-")]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(_config_name(tool), overrides=overrides, return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    for override in overrides:  # each override took effect: a group was chosen, or the key holds the value
        key, value = override.lstrip("+~").split("=", 1)
        if key in choices:
            assert choices[key] == value, override
        else:
            got = OmegaConf.select(cfg, key, default="<missing>")
            assert got != "<missing>", f"{override}: no key {key} in the composed {tool} config"
            assert str(OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == str(
                _parsed(value)), override
