"""Every command in the README's and docs' shell blocks parses as written: each project command is parsed by the
same parser its CLI uses (train.py's typed config with the presets, eval.py's, the generator's, the experiments'),
in-process, without running anything. A command the test does not know fails it, so none slips through."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: commands that are not the project's (installers, shells, schedulers): not parsed here
SKIP = ("pip", "python3 -m venv", "bash ", "#SBATCH", ". .venv", "apt-get", "cd ", "export ")


def shell_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks: continuation lines joined, comments and blank lines dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            out.append(line)
    return out


def _argv(cmd: str) -> list[str]:
    return shlex.split(cmd, comments=True)


def parse(cmd: str) -> None:
    """Parse ``cmd`` with its CLI's parser (raises on a bad flag); AssertionError for an unknown command."""
    if cmd.startswith(SKIP):
        return
    argv = _argv(cmd)
    if argv[0] in ("torchrun", "srun"):  # the launcher's flags, then the script
        argv = ["python", *argv[argv.index("train.py"):]]
    if argv[:2] == ["python", "-m"] and "&&" not in argv:
        module, rest = argv[2], argv[3:]
    elif argv[0] == "python":
        module, rest = argv[1], argv[2:]
    else:
        module, rest = argv[0], argv[1:]
    if module in ("train.py", "visual-dr3-train"):
        from visual_dr3.app import train

        from visual_dr3.app.cli_args import parse_train_args

        if "--help" in rest or "--print_config" in rest:
            return
        parse_train_args([a for a in rest], configs_dir=train.CONFIGS_DIR)
    elif module in ("eval.py", "visual-dr3-eval"):
        from visual_dr3.app.eval import build_parser

        build_parser().parse_args(rest)
    elif module in ("visual_dr3.data.generate", "visual-dr3-generate"):
        from visual_dr3.data.generate import build_parser

        build_parser().parse_args(rest)
    elif module == "visual_dr3.report.results":
        from visual_dr3.report.results import build_parser

        build_parser().parse_args(rest)
    elif module in ("visual_dr3.report", "visual-dr3-report"):
        assert rest and "--out" in rest, cmd
    elif module.startswith("experiments.") or module == "benchmarks" or module.startswith("benchmarks."):
        import importlib

        mod = importlib.import_module(module)
        if hasattr(mod, "build_parser"):
            mod.build_parser().parse_args(rest)
    elif module == "pytest" or module.startswith("pytest"):
        return
    else:
        raise AssertionError(f"unknown command in a shell block: {cmd}")


def test_shell_blocks_are_found():
    cmds = shell_commands((ROOT / "README.md").read_text())
    assert any(c.startswith("python train.py --task lift") for c in cmds)
    assert any(c.startswith("python eval.py") for c in cmds)
    assert shell_commands("```bash\npython a \\\n  --b 1   # c\n# d\n```") == ["python a  --b 1   # c"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_shell_command_parses(page, monkeypatch):
    monkeypatch.delenv("VISUAL_DR3_PRESET", raising=False)  # as a user runs them: the preset for this machine
    monkeypatch.chdir(ROOT)  # paths in the commands are relative to the repository
    for cmd in shell_commands(page.read_text()):
        try:
            parse(cmd)
        except SystemExit as e:  # argparse's way to refuse
            raise AssertionError(f"{page.name}: {cmd}: exit {e.code}") from None


def test_a_bad_flag_is_caught():
    from visual_dr3.errors import UserError

    with pytest.raises(UserError):
        parse("python train.py --task lift --dr3.bogus 1")
    with pytest.raises((UserError, SystemExit)):
        parse("python eval.py --checkpoint x --episodes zero")
    with pytest.raises(AssertionError, match="unknown command"):
        parse("frobnicate --now")
