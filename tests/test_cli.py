"""The command lines as a whole: light imports, documented flags, the README's promises."""

from __future__ import annotations

import importlib
import json
import re
import sys

import pytest
from conftest import ROOT, random_x, run_module, write_x

README = (ROOT / "README.md").read_text()
HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "pyspark", "matplotlib", "pandas", "polars")

MODULE_REPORT = """
import json, runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module("score", run_name="__main__")
except SystemExit as exit_:
    code = exit_.code
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imported_modules(argv: list[str]) -> set[str]:
    result = run_module_code(MODULE_REPORT.format(argv=argv))
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


def run_module_code(code: str):
    import subprocess

    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_score_help_imports_no_tensorflow_keras_or_tf2onnx():
    modules = imported_modules(["score", "--help"])
    assert "argparse" in modules
    assert heavy(modules) == []


def test_a_whole_scoring_run_imports_only_the_light_runtime(tmp_path, model_path):
    source = write_x(tmp_path / "in.parquet", random_x(100))
    modules = imported_modules(["score", source, str(tmp_path / "out.parquet"), "--model", model_path, "--quiet"])
    assert "onnxruntime" in modules and "pyarrow.parquet" in modules
    assert heavy(modules) == []
    assert (tmp_path / "out.parquet").exists()


def test_score_help_runs_and_lists_exit_codes():
    result = run_module("score", "--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and result.stderr == ""


def parsers():
    yield "score", importlib.import_module("score.__main__").parser()
    yield "score.report", importlib.import_module("score.report").parser()
    yield "score.preview", importlib.import_module("score.preview").parser()
    yield "train", importlib.import_module("train.__main__").parser()
    yield "export", importlib.import_module("export.__main__").parser()
    try:
        yield "score.spark", importlib.import_module("score.spark").parser()
    except (ImportError, AttributeError):
        pass


def test_every_command_line_flag_is_in_the_readme():
    missing = []
    for name, parser in parsers():
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and flag not in README:
                    missing.append(f"{name} {flag}")
    assert missing == []


def test_readme_quick_start_is_exactly_make_demo_and_make_test():
    first_block = re.search(r"```\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_readme_documents_every_exit_code():
    from score import errors

    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    table = re.search(r"### Exit codes\n(.*?)\n\n", README, re.S).group(1)
    documented = {int(match) for match in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert codes == documented


def test_every_make_target_is_phony_and_described():
    makefile = (ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY: (.*)$", makefile, re.M).group(1).split())
    described = set(re.findall(r"^([a-zA-Z_-]+):.*## ", makefile, re.M))
    assert phony == described
    for target in ("setup", "train", "export", "score", "demo", "test", "clean", "bench", "fixture", "data"):
        assert target in described


@pytest.mark.parametrize("module,positional", [
    ("score", ["in.parquet", "out.parquet"]), ("train", []), ("export", []), ("score.report", ["s.json", "r.png"]),
])
def test_usage_errors_exit_2(module, positional):
    result = run_module(module, *positional, "--no-such-flag")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_preview_prints_the_first_rows(tmp_path, model_path, capsys):
    from score.preview import main as preview

    x = random_x(7, seed=3)
    source = write_x(tmp_path / "in.parquet", x)
    assert run_score_quiet(source, tmp_path / "out.parquet", model_path) == 0
    assert preview([str(tmp_path / "out.parquet"), "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"x={x[0].tolist()}  y_pred=")
    assert lines[0].count(";") == 3  # four steps


def run_score_quiet(source, output, model_path) -> int:
    from conftest import run_score

    return run_score(source, output, "--model", model_path, "--quiet").code
