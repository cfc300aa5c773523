"""The documentation is complete and true: every command and option has help text and a mention
in README.md or docs/, the mapping reference matches the model, and the commands, queries and
scheduler snippets the docs show actually run."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from helpers import MAPPINGS, ROOT, SAMPLE_DATA, ledger_docs

from importer.cli import main
from importer.config.settings import Settings
from importer.emulator import EmulatorConfig, EmulatorServer
from importer.mapping import Mapping, PropertySpec, SourceOptions, load_mapping
from importer.mapping.tools import BEGIN_MARK, END_MARK, reference_markdown

DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
MODELS = (Mapping, PropertySpec, SourceOptions, Settings)


def doc_text() -> str:
    """README.md and every page in docs/, as one text."""
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Every command of the click tree, with its path (`ledger resolve`)."""
    yield " ".join(path), command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, (*path, name))


def options() -> Iterator[tuple[str, click.Option]]:
    """Every option of every command, with the command's path."""
    for path, command in walk(main):
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                yield path, param


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


# --- help text and mentions ---------------------------------------------------------------------


def test_every_command_has_help_text() -> None:
    """Each command and group explains itself in --help."""
    missing = [path or "(main)" for path, cmd in walk(main) if not (cmd.help or "").strip()]
    assert missing == []


def test_every_option_has_help_text() -> None:
    """Each option of each command has a help line."""
    missing = [f"{path}: {param.opts[0]}" for path, param in options() if not param.help]
    assert missing == []


def test_every_command_is_documented() -> None:
    """Each command appears as `fyno-import COMMAND` in README.md or docs/."""
    text = doc_text()
    missing = [path for path, _ in walk(main) if path and f"fyno-import {path}" not in text]
    assert missing == []


def test_every_option_is_documented() -> None:
    """Each option (its long name, or its short one if it has no other) appears in README.md
    or docs/ as a whole word."""
    text = doc_text()
    missing = set()
    for path, param in options():
        names = [o for o in param.opts if o.startswith("--")] or param.opts
        if not any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text) for n in names):
            missing.add(f"{path or '(main)'}: {names[0]}")
    assert sorted(missing) == []


def test_the_readme_starts_with_the_quickstart() -> None:
    """The first section of the README is the quickstart, and it shows the four steps."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert sections[0] == "Quickstart"
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    steps = [quickstart.index(f"fyno-import {step} ") for step in ("validate", "preview", "run")]
    assert steps == sorted(steps) and quickstart.index("fyno-import retry") > steps[-1]
    assert "make demo" in quickstart and "make test" in quickstart


# --- docs/mapping.md ----------------------------------------------------------------------------


def test_the_mapping_reference_is_generated_from_the_model() -> None:
    """The generated part of docs/mapping.md is what the model gives today (to refresh it:
    `python -m importer.mapping.tools docs/mapping.md`)."""
    text = (DOCS / "mapping.md").read_text(encoding="utf-8")
    start, end = text.index(BEGIN_MARK), text.index(END_MARK) + len(END_MARK)
    assert text[start:end] == reference_markdown()


def test_every_mapping_key_and_value_has_an_example() -> None:
    """Each key of the mapping model, and each allowed value of its choice keys, is used in at
    least one YAML example of docs/mapping.md."""
    examples = "\n".join(blocks(DOCS / "mapping.md", "yaml"))
    missing = []
    for model in MODELS:
        for name, field in model.model_fields.items():
            if not re.search(rf"(?<![\w-]){name}:", examples):
                missing.append(f"{model.__name__}.{name}")
            annotation = field.annotation
            choices = [a for a in get_args(annotation) if get_origin(a) is Literal]
            if get_origin(annotation) is Literal:
                choices.append(annotation)
            for choice in choices:
                for value in get_args(choice):
                    if not re.search(rf"{name}: \$?{value}\b", examples):
                        missing.append(f"{model.__name__}.{name}: {value}")
    assert missing == []


def test_every_mapping_example_in_the_docs_is_valid(tmp_path: Path) -> None:
    """The YAML, JSON and TOML examples of docs/mapping.md and README.md load as mappings."""
    count = 0
    for page in (DOCS / "mapping.md", ROOT / "README.md"):
        for language, suffix in (("yaml", ".yaml"), ("json", ".json"), ("toml", ".toml")):
            for index, text in enumerate(blocks(page, language)):
                path = tmp_path / f"{page.stem}-{index}{suffix}"
                path.write_text(text, encoding="utf-8")
                load_mapping(path)
                count += 1
    assert count >= 10


# --- docs/ledger.md -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ledger_after_trouble() -> Iterator[tuple[Path, dict[str, Any]]]:
    """A real ledger of an import that met 503s and dropped connections (so failed and
    ambiguous chunks), and the run's JSON summary."""
    with tempfile.TemporaryDirectory() as scratch:
        ledger = Path(scratch) / "fyno-import.ledger.db"
        config = EmulatorConfig(port=0, fail_rate=0.2, drop_rate=0.2, seed=11)
        with EmulatorServer(config) as server:
            result = invoke(
                "run",
                SAMPLE_DATA / "users.csv",
                "-m",
                MAPPINGS / "migration.yaml",  # carries $add: dropped answers make it ambiguous
                "--base-url",
                server.url,
                "--max-retries",
                "0",
                "--batch-size",
                "50",  # 60 requests: enough for both faults to meet some
                "--ledger",
                ledger,
                "--rejects",
                Path(scratch) / "rejects.csv",
                "--max-reject-rate",
                "1",
                "--json",
                env={"FYNO_API_KEY": "k", "FYNO_WORKSPACE_ID": "ws"},
            )
        summary = json.loads(result.stdout)
        assert result.exit_code == 1 and summary["chunks_failed"] and summary["chunks_ambiguous"]
        yield ledger, summary


def test_every_query_in_the_ledger_doc_runs(ledger_after_trouble: tuple[Path, Any]) -> None:
    """Each SQL block of docs/ledger.md runs on a real ledger; the status counts it gives agree
    with the run's summary."""
    ledger, summary = ledger_after_trouble
    queries = blocks(DOCS / "ledger.md", "sql")
    assert len(queries) >= 5
    connection = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        results = {query: connection.execute(query).fetchall() for query in queries}
    finally:
        connection.close()
    by_status = next(q for q in queries if q.startswith("-- chunk counts by status"))
    counts = {status: chunks for _, status, chunks, _, _ in results[by_status]}
    assert counts.get("accepted", 0) == summary["chunks_accepted"]
    assert counts.get("failed", 0) == summary["chunks_failed"]
    assert counts.get("ambiguous", 0) == summary["chunks_ambiguous"]
    resolve = next(q for q in queries if "ledger resolve" in q)
    assert len(results[resolve]) == summary["chunks_ambiguous"]


def test_the_ledger_doc_query_runs_in_the_sqlite3_shell(
    ledger_after_trouble: tuple[Path, Any],
) -> None:
    """The first query, pasted into the `sqlite3` command line opened as the doc shows."""
    sqlite = shutil.which("sqlite3")
    if sqlite is None:
        pytest.skip("no sqlite3 command line on this machine")
    ledger, summary = ledger_after_trouble
    query = blocks(DOCS / "ledger.md", "sql")[0]
    result = subprocess.run(
        [sqlite, "-readonly", "-json", str(ledger)],
        input=query,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    rows = json.loads(result.stdout)
    assert rows[0]["run_id"] == summary["run_id"] and rows[0]["exit_code"] == 1


def test_the_python_snippet_of_the_ledger_doc_decodes_ids(
    ledger_after_trouble: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The snippet that reads the compressed columns prints one line per failed chunk."""
    ledger, summary = ledger_after_trouble
    (snippet,) = blocks(DOCS / "ledger.md", "python")
    monkeypatch.chdir(ledger.parent)
    exec(compile(snippet, "docs/ledger.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == summary["chunks_failed"] + summary["chunks_ambiguous"]
    assert all("'u-" in line for line in lines)


def test_the_ledger_doc_shows_what_ledger_show_prints() -> None:
    """The examples of docs/ledger.md are what `ledger show` prints for ledgers that real runs
    and retries wrote (to refresh them: `python tools/ledger_docs.py docs/ledger.md`)."""
    tool = ledger_docs()
    text = (DOCS / "ledger.md").read_text(encoding="utf-8")
    start, end = text.index(tool.BEGIN_MARK), text.index(tool.END_MARK) + len(tool.END_MARK)
    examples = tool.build_examples()
    assert set(examples) == {name for name, _, _ in tool.SECTIONS}
    assert text[start:end] == tool.generated_block(examples)


# --- README quickstart and docs/scheduling.md ---------------------------------------------------


def test_the_readme_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """validate → preview → run → retry as the quickstart shows them, against an emulator with
    the quickstart's fault rate: exit 1, 0, 1 (some chunks failed), then 0 (all resent)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("### Install", 1)[0]
    lines = [line.strip() for line in quickstart.splitlines() if line.startswith("    ")]
    emulator = next(line for line in lines if line.startswith("fyno-import emulator"))
    fail_rate = float(re.search(r"--fail-rate ([\d.]+)", emulator)[1])  # type: ignore[index]
    seed = int(re.search(r"--seed (\d+)", emulator)[1])  # type: ignore[index]
    exports = next(line for line in lines if line.startswith("export FYNO_API_KEY"))
    env = dict(word.split("=", 1) for word in shlex.split(exports)[1:])
    commands = [
        shlex.split(line.split("  #")[0])[1:]
        for line in lines
        if line.startswith("fyno-import ")
        and line.split()[1] in ("validate", "preview", "run", "retry")
    ][:4]
    for name in ("sample_data", "mappings"):
        shutil.copytree(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    with EmulatorServer(EmulatorConfig(port=0, fail_rate=fail_rate, seed=seed)) as server:
        env["FYNO_BASE_URL"] = server.url
        codes = [invoke(*args, env=env).exit_code for args in commands[:3]]
        refused = server.stats()["requests_by_status"].get("503", 0)
        codes.append(invoke(*commands[3], env=env).exit_code)
        ledger = invoke("ledger", "show", "--json")
    assert [args[0] for args in commands] == ["validate", "preview", "run", "retry"]
    assert codes == [1, 0, 1, 0] and refused > 0  # the run's 1 is failed chunks, not only rejects
    (report,) = json.loads(ledger.stdout)
    assert report["status"] == "finished"


def test_make_demo_imports_the_sample_data_without_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Makefile's demo command, run in-process: it imports both sample files into the
    built-in emulator (exit 1: the sample's rejected rows), shows profiles and a summary, and
    says nothing of files it ignored (sample_data/ holds only the data)."""
    recipe = (ROOT / "Makefile").read_text(encoding="utf-8").split("\ndemo:", 1)[1]
    command = recipe.split("$(BIN)/fyno-import ", 1)[1].split("||", 1)[0].replace("\\\n", " ")
    args = shlex.split(command)
    for name in ("sample_data", "mappings"):
        shutil.copytree(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    env = {"FYNO_API_KEY": "demo-key-0000", "FYNO_WORKSPACE_ID": "demo"}
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    output = result.stdout + result.stderr
    assert args[:2] == ["run", "sample_data/"] and "--emulator" in args
    assert result.exit_code == 1, output
    assert "ignored" not in output.lower()
    rows_read = re.search(r"rows read\s+([\d,]+)", output)
    assert rows_read and int(rows_read[1].replace(",", "")) >= 6_000, output  # both files
    assert (tmp_path / "demo.rejects.csv").read_text(encoding="utf-8").count("\n") > 1


def crontab_command(tmp: Path) -> str:
    """The command of the cron line in docs/scheduling.md, with its two paths moved to tmp."""
    (crontab,) = blocks(DOCS / "scheduling.md", "crontab")
    (line,) = [line for line in crontab.splitlines() if re.match(r"^[\d*]", line)]
    command = line.split(None, 5)[5]
    assert command.startswith("cd /srv/fyno-import && fyno-import run ")
    command = command.replace("/etc/fyno-import/key", str(tmp / "key"))
    return command.replace("/srv/fyno-import", str(tmp))


def test_the_cron_line_runs_and_exits_as_the_doc_says(tmp_path: Path) -> None:
    """The cron line, run by sh against an emulator: the first night reports exit 1 (the sample
    data's rejected rows), a rerun exit 2 (already imported); every log line is JSON."""
    (tmp_path / "exports").mkdir()
    for name in ("users.csv", "users.parquet"):
        shutil.copy(SAMPLE_DATA / name, tmp_path / "exports" / name)
    shutil.copy(MAPPINGS / "nightly_export.yaml", tmp_path / "nightly_export.yaml")
    (tmp_path / "key").write_text("cron-key\n")
    command = crontab_command(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FYNO_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    with EmulatorServer(EmulatorConfig(port=0, api_key="cron-key")) as server:
        env["FYNO_BASE_URL"] = server.url
        runs = [
            subprocess.run(
                ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120
            )
            for _ in range(2)
        ]
    assert [r.returncode for r in runs] == [0, 0]  # the echo after || ran
    assert runs[0].stdout.startswith("fyno-import exit 1 ")
    assert runs[1].stdout.startswith("fyno-import exit 2 ")
    log = (tmp_path / "fyno-import.log.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in log]
    finished = [e for e in events if e["event"] == "run_finished"]
    assert [e["exit_code"] for e in finished] == [1, 2]
    assert finished[0]["rows_rejected"] > 0 and finished[0]["items_sent"] > 0
    assert (tmp_path / "fyno-import.ledger.db").exists()
    assert "cron-key" not in "\n".join(log)
    doc = (DOCS / "scheduling.md").read_text(encoding="utf-8")
    assert "| 1 | finished, but some rows were rejected" in doc and "| 2 | nothing was sent" in doc


@pytest.fixture
def fake_fyno_import(tmp_path: Path) -> Path:
    """A stand-in `fyno-import` on PATH that records its arguments and exits with $FAKE_EXIT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "fyno-import"
    script.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\nexit "$FAKE_EXIT"\n')
    script.chmod(0o755)
    return bin_dir


def run_shell(command: str, bin_dir: Path, exit_code: int, **env: str) -> tuple[int, list[str]]:
    """Run a doc's shell command with the stand-in; return the shell's exit and the arguments."""
    args_file = bin_dir / "args"
    args_file.unlink(missing_ok=True)
    full_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "ARGS_FILE": str(args_file),
        "FAKE_EXIT": str(exit_code),
        **env,
    }
    result = subprocess.run(["sh", "-c", command], env=full_env, timeout=30, check=False)
    return result.returncode, args_file.read_text().splitlines()


def test_the_kubernetes_job_shards_by_index_and_maps_exit_codes(fake_fyno_import: Path) -> None:
    """The indexed Job of docs/scheduling.md is valid YAML; its shell gives pod index 1 shard
    2/4 with its own rejects file, turns exit 1 into 0 and passes 2 and 3 through."""
    (job_text,) = [b for b in blocks(DOCS / "scheduling.md", "yaml") if "kind: Job" in b]
    job = yaml.safe_load(job_text)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 4
    rule = spec["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailIndex" and rule["onExitCodes"]["values"] == [2]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == ["sh", "-c"]
    script = container["args"][0]
    outcomes = {}
    for code in (0, 1, 2, 3):
        outcomes[code], args = run_shell(script, fake_fyno_import, code, JOB_COMPLETION_INDEX="1")
        assert args[args.index("--shard") + 1] == "2/4"
        assert args[args.index("--rejects") + 1] == "rejects.shard-2-of-4.csv"
        assert args[0] == "run" and "--log-format" in args
    assert outcomes == {0: 0, 1: 0, 2: 2, 3: 3}


def test_the_airflow_dag_parses_and_its_command_maps_exit_codes(fake_fyno_import: Path) -> None:
    """The Airflow example is valid Python; its bash_command (templated) calls `run` with --json
    and treats exit 1 as success, 2 and 3 as failures."""
    (source,) = blocks(DOCS / "scheduling.md", "python")
    tree = ast.parse(source)
    assigned = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    command = ast.literal_eval(assigned["FYNO_IMPORT"]).replace("{{ ds }}", "2024-03-01")
    outcomes = {}
    for code in (0, 1, 2, 3):
        outcomes[code], args = run_shell(command, fake_fyno_import, code)
        assert args[:2] == ["run", "s3://warehouse-exports/users/2024-03-01/"] and "--json" in args
    assert outcomes == {0: 0, 1: 0, 2: 2, 3: 3}
    assert "bash_command=FYNO_IMPORT" in source and "do_xcom_push=True" in source
