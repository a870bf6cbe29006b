"""The README's and docs/' examples, as a new user meets them in a fresh clone after `make demo`.

Every command in a code block must run as written there: each file it reads is in the
repository, is made by `make demo`, or is made by an earlier example on the same page; no example
but `make train` and `make export` writes over the demo's model; every flag parses. The cheap
ones (scoring the demo's rows, the preview, the report, an ONNX import, --help) run here, in a
copy of that state; training, Spark, the benchmark and object stores do not.

Blocks fenced as ```text hold output, crontab lines and the like, not commands; ```python blocks
are read for the files they name and write (`save(...)`, `export(...)`, `write_table(...)`), not run.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FIXTURE_MODEL, ROOT, parser_of

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEMO_MODEL = "artifacts/model.onnx"
# What `make demo` leaves (the Makefile's demo: train, export, then score fresh rows).
DEMO_FILES = {
    *(f"artifacts/{name}" for name in ("model.keras", "spec.json", "test.parquet", "metrics.json",
                                        "baseline.json", "training_curves.png", "model.onnx",
                                        "model.onnx.sha256", "export_report.json")),
    "build/demo/sample.parquet", "build/demo/scored.parquet", "build/demo/summary.json",
}
# The only examples allowed to replace the demo's model: they make a new one on purpose.
REPLACE_THE_MODEL = {("make", "train"), ("make", "export")}
SHELL_INFO = {"", "sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<info>[\w-]*)\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)
# In a python block: a file the block itself writes (model.save("..."), torch.onnx.export(..., "..."),
# pq.write_table(table, "..."), write_deltalake("...", ...)).
PYTHON_WRITES = re.compile(r"(?:save|export|write_table)\((?:[^\"]|\n)*?\"([^\"]+\.(?:keras|h5|onnx|parquet))\""
                           r"|write_deltalake\(\"([^\"]+)\"")  # ... or a Delta table's folder


def python_writes(example: str) -> list[str]:
    """The files (and Delta tables) a python example writes."""
    return [file or table for file, table in PYTHON_WRITES.findall(example)]
PYTHON_PATHS = re.compile(r"[\"']([\w./-]+/[\w.-]+\.(?:parquet|onnx|json|keras|h5|png|txt))[\"']")


@dataclass
class Command:
    page: str
    text: str  # as written, continuation lines joined
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.page}: {self.text}"


@dataclass
class Effects:
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    run: list[str] | None = None  # `python -m` arguments when cheap enough to run here
    needs_folders: bool = False  # the writes' folders must exist (the local job does not make them)


def blocks(page: Path) -> list[tuple[str, str]]:
    """(info, body) of each fenced code block, in order, list-item indentation removed."""
    found = []
    for match in FENCE.finditer(page.read_text()):
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        found.append((match["info"], body))
    return found


def shell_commands(page: Path, body: str) -> list[Command]:
    """The simple commands of a shell block: comments dropped, `\\` continuations joined, and
    `a && b`, `a | b`, `a; b` split."""
    commands = []
    for line in re.sub(r"\\\n", " ", body).splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()  # a comment starts a word
        if not line:
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, ""
        argv: list[str] = []
        for token in [*lexer, ";"]:
            if token in (";", "&&", "||", "|", "&"):
                if argv:
                    commands.append(Command(page.name, line, argv))
                argv = []
            else:
                argv.append(token)
    return commands


def outside(path: str) -> bool:
    """A URI (s3://, hdfs://, ...) or an absolute path: a deployment's, not the clone's."""
    return "://" in path or path.startswith("/")


def normal(path: str) -> str:
    return posixpath.normpath(path.split("#")[0])


def path_like(token: str) -> bool:
    """A repository-relative path an unknown program is given: not a flag, URI, assignment or
    absolute (deployment) path."""
    return ("/" in token and "://" not in token and "=" not in token and not token.startswith(("-", "/"))
            and not token.startswith("'"))


# What each `python -m` module reads and writes, by the names its parser gives them.
ROLES = {
    "score": {"input": "read", "output": "write", "model": "read", "summary": "write"},
    "score.spark": {"input": "read", "output": "write", "model": "read", "summary": "write"},
    "score.report": {"summary": "read", "report": "write"},
    "score.preview": {"scored": "read"},
    "train": {"data": "read", "x_text": "read", "y_text": "read", "write_default": "write"},
    "export": {"onnx": "read", "keras": "read", "reference": "read", "output": "write"},
    "bench": {},
    "bench.variant": {},
}
RUN_HERE = {"score", "score.report", "score.preview"}  # cheap: onnxruntime, pyarrow, matplotlib


def python_module(command: Command, argv: list[str]) -> Effects:
    """`python -m MODULE ARGS`: the module's own parser says which argument is which."""
    module, args = argv[2], argv[3:]
    if module == "venv":
        return Effects(writes=[args[-1]])
    assert module in ROLES, f"{command}: an unknown module {module}"
    if args == ["--help"]:
        return Effects(run=[module, "--help"] if module.startswith(("score", "bench")) else None)
    try:
        parsed = parser_of(module).parse_args(args)
    except SystemExit as exit_:
        pytest.fail(f"{command}: its arguments do not parse (exit {exit_.code})")
    effects = Effects(needs_folders=module in ("score", "score.report"))
    for name, role in ROLES[module].items():
        value = getattr(parsed, name)
        if value is not None:
            (effects.reads if role == "read" else effects.writes).append(str(value))
    if module == "train" and not parsed.write_default:
        effects.writes.append(parsed.artifacts)  # training replaces the folder as a whole
    if module == "export":
        if parsed.onnx is None and parsed.keras is None:
            effects.reads.append(parsed.artifacts or "artifacts")
            if parsed.output is None:
                effects.writes.append(f"{parsed.artifacts or 'artifacts'}/model.onnx")
        elif parsed.output is None:
            effects.writes.append(DEMO_MODEL)  # the import's default
    runs = module in RUN_HERE or (module == "export" and parsed.onnx is not None)
    runs = runs and not any(outside(path) for path in effects.reads + effects.writes)
    effects.run = [module, *args] if runs else None
    return effects


def make(command: Command, argv: list[str]) -> Effects:
    """`make TARGET VAR=...`: the files the Makefile's recipes read and write."""
    variables = dict(arg.split("=", 1) for arg in argv[1:] if "=" in arg)
    targets = [arg for arg in argv[1:] if "=" not in arg and not arg.startswith("-")] or ["help"]
    phony = re.search(r"^\.PHONY: (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    effects = Effects()
    for target in targets:
        assert target in phony, f"{command}: no make target {target}"
        example = variables.get("EXAMPLE", "default")
        artifacts = variables.get("ARTIFACTS", "artifacts" if example == "default" else f"artifacts-{example}")
        if target == "train":
            effects.reads += [variables[name] for name in ("DATA", "X", "Y") if name in variables]
            effects.writes.append(artifacts)
        elif target == "export":
            effects.writes.append(f"{artifacts}/model.onnx")
        elif target == "data":
            effects.writes.append("data/default.parquet")
        elif target == "score":
            assert "IN" in variables and "OUT" in variables, f"{command}: make score needs IN= and OUT="
            effects.reads.append(variables["IN"])
            effects.writes.append(variables["OUT"])
    return effects


def effects_of(command: Command) -> Effects:
    argv = list(command.argv)
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # VAR=value before a command
        argv.pop(0)
    if not argv or argv[0] in ("cd", "export", "echo"):
        return Effects()
    program = argv[0]
    if program == "make":
        return make(command, argv)
    if Path(program).name in ("python", "python3") and argv[1:2] == ["-m"]:
        return python_module(command, argv)
    if program == "mkdir":
        return Effects(writes=[arg for arg in argv[1:] if not arg.startswith("-")])
    if program == "cp":
        sources, target = [a for a in argv[1:-1] if not a.startswith("-")], argv[-1]
        return Effects(reads=sources, writes=[target])
    # Another program (pip, venv-pack, spark-submit, ...): what follows -o or --output is
    # written, every other repository path it is given is read.
    effects = Effects(reads=[program] if "/" in program else [])
    for before, token in zip(argv, argv[1:]):
        if path_like(token):
            (effects.writes if before in ("-o", "--output") else effects.reads).append(token)
    return effects


class Clone:
    """What a fresh clone holds after `make demo`, and what a page's examples have made since."""

    def __init__(self) -> None:
        self.made: set[str] = set()

    def has(self, path: str) -> bool:
        if outside(path):
            return True
        path = normal(path)
        known = DEMO_FILES | self.made
        return ((ROOT / path).exists() or path in known
                or any(name.startswith(path + "/") or path.startswith(name + "/") for name in self.made)
                or any(name.startswith(path + "/") for name in DEMO_FILES))


def page_examples(page: Path) -> list[tuple[str, Command | str]]:
    """A page's examples in order: ("shell", Command) or ("python", body)."""
    examples: list[tuple[str, Command | str]] = []
    for info, body in blocks(page):
        if info in SHELL_INFO:
            examples += [("shell", command) for command in shell_commands(page, body)]
        elif info == "python":
            examples.append(("python", body))
    return examples


def check_page(page: Path) -> list[str]:
    """Every problem of a page's examples, as one line each."""
    clone, problems = Clone(), []
    for kind, example in page_examples(page):
        if kind == "python":
            written = set(python_writes(example))
            clone.made |= {normal(path) for path in written}
            problems += [f"{page.name}: a python example reads {path}, which nothing makes"
                         for path in PYTHON_PATHS.findall(example) if path not in written and not clone.has(path)]
            continue
        effects = effects_of(example)
        problems += [f"{example}: reads {path}, which neither the repository, `make demo` nor an "
                     f"earlier example makes" for path in effects.reads if not clone.has(path)]
        replaces = (example.argv[0], next((a for a in example.argv[1:] if "=" not in a), "")) in REPLACE_THE_MODEL
        for path in [normal(path) for path in effects.writes if not outside(path)]:
            folder = posixpath.dirname(path)
            if effects.needs_folders and folder and not clone.has(folder):
                problems.append(f"{example}: writes into {folder}/, which does not exist")
            if not replaces and (path == DEMO_MODEL or DEMO_MODEL.startswith(path + "/")):
                problems.append(f"{example}: writes over the demo's model {DEMO_MODEL}")
            clone.made.add(path)
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_example_reads_what_exists_and_keeps_the_demo_model(page):
    assert check_page(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_page_has_examples(page):
    assert page_examples(page), f"{page.name}: no command to try"


def test_the_checks_catch_the_faults_a_new_user_met(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```\n"
        "python -m export --onnx lstm.onnx --x-values 0..10 --y-values 0..10 \\\n"
        "    --reference data/sample.parquet --output artifacts/model.onnx\n"
        "python -m export --quantize int8   # writes artifacts/model.onnx again\n"
        "make train DATA=my.parquet\n"
        "python -m score build/demo/sample.parquet build/out.parquet --top-k 3\n"
        "python -m score build/demo/sample.parquet out/scored.parquet\n"
        "```\n")
    problems = check_page(page)
    assert [problem.rsplit(": ", 1)[1] for problem in problems] == [
        "reads lstm.onnx, which neither the repository, `make demo` nor an earlier example makes",
        "reads data/sample.parquet, which neither the repository, `make demo` nor an earlier example makes",
        "writes over the demo's model artifacts/model.onnx",
        "writes over the demo's model artifacts/model.onnx",
        "reads my.parquet, which neither the repository, `make demo` nor an earlier example makes",
        "writes into out/, which does not exist",
    ]


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250  # the rest is in docs/


def test_scoring_documents_the_readme_exit_codes():
    def table(text: str) -> str:
        return re.search(r"## Exit codes\n\n(.*?)\n\n", text, re.S).group(1)

    assert table((ROOT / "docs" / "scoring.md").read_text()) == table((ROOT / "README.md").read_text())


# Running the cheap examples ------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_clone(tmp_path_factory) -> Path:
    """A stand-in for a fresh clone after `make demo`: the code, the committed fixture model as
    the demo's model, and the demo's fresh rows scored with it."""
    from train import data

    clone = tmp_path_factory.mktemp("clone")
    for name in ("score", "train", "export", "bench", "tests", "docs", "tools"):
        (clone / name).symlink_to(ROOT / name)
    (clone / "artifacts").mkdir()
    for name in (FIXTURE_MODEL.name, FIXTURE_MODEL.name + ".sha256"):
        shutil.copy(FIXTURE_MODEL.parent / name, clone / "artifacts" / name)
    (clone / "build" / "demo").mkdir(parents=True)
    data.write_parquet(data.example_dataset("default", seed=1), str(clone / "build/demo/sample.parquet"))
    run_here(clone, ["score", "build/demo/sample.parquet", "build/demo/scored.parquet",
                     "--summary", "build/demo/summary.json", "--quiet"])
    return clone


def run_here(clone: Path, module_args: list[str], what: str = "") -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(clone)}
    result = subprocess.run([sys.executable, "-m", *module_args], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{what or module_args}: exit {result.returncode}\n{result.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_the_cheap_examples_run_as_written(page, demo_clone):
    not_made: set[str] = set()  # written by an example not run here (PyTorch's export, Spark)
    for kind, example in page_examples(page):
        if kind == "python":
            not_made |= {normal(path) for path in python_writes(example)}
            continue
        if example.argv[0] in ("mkdir", "cp"):
            subprocess.run(example.argv, cwd=demo_clone, check=True)
            continue
        effects = effects_of(example)
        if effects.run is None or not_made & set(map(normal, effects.reads)):
            not_made |= set(map(normal, effects.writes))
        else:
            run_here(demo_clone, effects.run, str(example))
