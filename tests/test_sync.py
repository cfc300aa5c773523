"""Incremental sync (`run --changed-only`) end to end against the emulator over a real socket.

Each night sends, per profile and property, only what changed since the last delivery; the
emulator's profiles always end as full imports of the same files would leave them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import API_KEY, WORKSPACE, emulator, one_json, port_of, requests_total
from moto_helpers import Bucket, bucket, moto_url  # noqa: F401  (fixtures)

from importer.cli import main

SIMPLE = """\
distinct_id: id
properties:
  - {column: email, op: set}
  - {column: plan, op: set, on_null: unset}
  - {column: source, property: first_source, op: once}
  - {column: tags, op: append, split: ";"}
  - {column: logins, op: add, type: integer}
"""
COLUMNS = ["id", "email", "plan", "source", "tags", "logins"]


def rows_of(count: int, *, start: int = 0) -> list[dict[str, str]]:
    """Profiles p-<n> with every property set, no $add."""
    return [
        {
            "id": f"p-{n}",
            "email": f"user{n}@example.com",
            "plan": ["free", "pro", "team"][n % 3],
            "source": ["ads", "seo"][n % 2],
            "tags": "a;b" if n % 4 else "c",
            "logins": "",
        }
        for n in range(start, start + count)
    ]


def write_rows(path: Path, rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def invoke(
    args: list[str], base_url: str | None, cwd: Path | None = None
) -> tuple[int, dict[str, Any], str]:
    """Run the CLI in-process (in ``cwd`` if given); exit code, JSON summary, stderr."""
    from click.testing import CliRunner

    env = {"FYNO_API_KEY": API_KEY, "FYNO_WORKSPACE_ID": WORKSPACE, "FYNO_BASE_URL": base_url}
    before = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, args, env=env)
    finally:
        os.chdir(before)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"raised: {result.exception!r}\n{result.stderr}") from result.exception
    return result.exit_code, one_json(result.stdout), result.stderr


def nightly(
    tmp: Path, source: Path, url: str, *extra: str, mapping: str = SIMPLE
) -> tuple[int, dict[str, Any], str]:
    """One changed-only run with its own files in ``tmp``."""
    mapping_file = tmp / "mapping.yaml"
    mapping_file.write_text(textwrap.dedent(mapping), encoding="utf-8")
    args = [
        "run",
        str(source),
        "-m",
        str(mapping_file),
        "--changed-only",
        "--ledger",
        str(tmp / "run.ledger.db"),
        "--rejects",
        str(tmp / "rejects.csv"),
        "--state",
        str(tmp / "state"),
        "--json",
        "--no-progress",
        *extra,
    ]
    return invoke(args, url)


def sent_actions(bodies: list[bytes]) -> dict[str, list[dict[str, Any]]]:
    """The actions each profile received, in order, from request bodies."""
    out: dict[str, list[dict[str, Any]]] = {}
    for body in bodies:
        for item in json.loads(body)["batch"]:
            out.setdefault(item["distinct_id"], []).append(item["action"])
    return out


def full_import(rows_per_night: list[list[dict[str, str]]]) -> dict[str, dict[str, Any]]:
    """The profiles full imports of each night's rows (SIMPLE mapping) leave, by hand."""
    profiles: dict[str, dict[str, Any]] = {}
    for rows in rows_per_night:
        for r in rows:
            p = profiles.setdefault(r["id"], {})
            if r["email"]:
                p["email"] = r["email"]
            if r["plan"]:
                p["plan"] = r["plan"]
            else:
                p.pop("plan", None)
            if r["source"]:
                p.setdefault("first_source", r["source"])
            for tag in [t.strip() for t in r["tags"].split(";") if t.strip()]:
                p.setdefault("tags", [])
                if tag not in p["tags"]:
                    p["tags"].append(tag)
            if r["logins"]:
                p["logins"] = p.get("logins", 0) + int(r["logins"])
    return {k: v for k, v in profiles.items() if v}


def full_actions(row: dict[str, str]) -> list[dict[str, Any]]:
    """What a first delivery of a row sends (SIMPLE mapping, no logins): one item per tag."""
    tags = [t for t in row["tags"].split(";") if t]
    first: dict[str, Any] = {
        "$set": {"email": row["email"], "plan": row["plan"]},
        "$once": {"first_source": row["source"]},
        "$append": {"tags": tags[0]},
    }
    return [first, *({"$append": {"tags": t}} for t in tags[1:])]


def profiles_of(server: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for i in ids:
        found = server.profile(i, workspace=WORKSPACE)
        if found:
            out[i] = found
    return out


def test_a_second_night_sends_exactly_the_changed_profiles_and_properties(tmp_path: Path) -> None:
    """Night 1 sends everything; night 2 (edits, a cleared plan, deletions, new ids) sends only
    the changed properties of the changed profiles; night 3, unchanged, sends nothing (exit 0).
    The profiles equal full imports of the same files."""
    night1 = rows_of(40)
    night2 = [dict(r) for r in night1[:36]] + rows_of(3, start=100)  # 4 deleted, 3 new
    night2[0]["email"] = "changed@example.com"
    night2[1]["plan"] = ""  # cleared: on_null unset
    night2[2]["source"] = "referral"  # once: already delivered, not sent
    night2[3]["tags"] = "a;b;z"  # a new piece: the whole cell again
    with emulator(log=True, keep_bodies=True) as (server, log):
        assert log is not None
        code, first, _ = nightly(tmp_path, write_rows(tmp_path / "n1.csv", night1), server.url)
        assert code == 0 and first["items_sent"] == 40 + sum(
            1 for r in night1 if r["tags"] == "a;b"
        )
        assert first["profiles_changed"] == 40 and first["state"] == str(tmp_path / "state")
        before = len(log.bodies)
        code, second, err = nightly(tmp_path, write_rows(tmp_path / "n2.csv", night2), server.url)
        assert code == 0, err
        got = sent_actions(log.bodies[before:])
        assert got == {
            "p-0": [{"$set": {"email": "changed@example.com"}}],
            "p-1": [{"$unset": ["plan"]}],
            "p-3": [
                {"$append": {"tags": "a"}},
                {"$append": {"tags": "b"}},
                {"$append": {"tags": "z"}},
            ],
            **{r["id"]: full_actions(r) for r in night2[36:]},
        }
        assert second["profiles_changed"] == 6 and second["rows_unchanged"] == 33
        assert second["profiles_missing"] == 0
        assert second["items_total"] == second["items_sent"] == sum(map(len, got.values()))
        assert second["bytes_total"] == second["bytes_sent"] == sum(map(len, log.bodies[before:]))
        before = requests_total(server.stats())
        code, third, _ = nightly(tmp_path, tmp_path / "n2.csv", server.url)
        assert code == 0 and third["items_sent"] == 0 and third["chunks_total"] == 0
        assert requests_total(server.stats()) == before
        ids = sorted({r["id"] for r in night1 + night2})
        assert profiles_of(server, ids) == full_import([night1, night2])


def test_add_values_are_always_sent(tmp_path: Path) -> None:
    """An $add is a delta: sent every night, whatever the state holds."""
    night = rows_of(5)
    for r in night:
        r["logins"] = "2"
    with emulator() as (server, _):
        source = write_rows(tmp_path / "n.csv", night)
        nightly(tmp_path, source, server.url)
        code, again, _ = nightly(tmp_path, source, server.url)
        assert code == 0 and again["items_sent"] == 5 and again["profiles_changed"] == 5
        assert server.profile("p-1", workspace=WORKSPACE)["logins"] == 4


def test_failed_chunks_are_sent_again_the_next_night_and_only_they(tmp_path: Path) -> None:
    """Night 2's requests all fail (503): the state keeps night 1's values, so the same file
    again sends exactly those changes, and the profiles end as full imports leave them."""
    night1 = rows_of(30)
    night2 = [
        dict(r, email=f"new{n}@example.com") if n < 5 else dict(r) for n, r in enumerate(night1)
    ]
    db = tmp_path / "emulator.db"
    with emulator(db=db) as (server, _):
        port = port_of(server.url)
        nightly(tmp_path, write_rows(tmp_path / "n1.csv", night1), server.url)
    with emulator(db=db, port=port, fail_rate=1.0, log=True, keep_bodies=True) as (failing, log):
        assert log is not None
        code, failed, _ = nightly(
            tmp_path, write_rows(tmp_path / "n2.csv", night2), failing.url, "--max-retries", "0"
        )
        assert code == 1 and failed["chunks_failed"] == 1 and failed["state_advanced"] is True
        attempted = sent_actions(log.bodies)
    with emulator(db=db, port=port, log=True, keep_bodies=True) as (healthy, log):
        assert log is not None
        code, _, _ = nightly(tmp_path, tmp_path / "n2.csv", healthy.url)
        assert code == 0 and sent_actions(log.bodies) == attempted
        assert set(attempted) == {f"p-{n}" for n in range(5)}
        code, quiet, _ = nightly(tmp_path, tmp_path / "n2.csv", healthy.url)
        assert code == 0 and quiet["items_sent"] == 0
        assert profiles_of(healthy, [r["id"] for r in night1]) == full_import([night1, night2])


def test_a_mapping_change_sends_only_the_new_or_changed_property(tmp_path: Path) -> None:
    """A property added to the mapping is sent to every profile, alone; one whose source
    changes is sent again, alone; the others stay quiet."""
    rows = rows_of(10)
    columns = [*COLUMNS, "country"]
    for n, r in enumerate(rows):
        r["country"] = ["FR", "DE"][n % 2]
    source = write_rows(tmp_path / "n.csv", rows, columns)
    with emulator(log=True, keep_bodies=True) as (server, log):
        assert log is not None
        nightly(tmp_path, source, server.url)
        before = len(log.bodies)
        more = SIMPLE + "  - {column: country, op: set}\n"
        code, added, _ = nightly(tmp_path, source, server.url, mapping=more)
        assert code == 0 and added["items_sent"] == 10
        got = sent_actions(log.bodies[before:])
        assert all(
            actions == [{"$set": {"country": r["country"]}}]
            for r, actions in zip(rows, got.values(), strict=True)
        )
        before = len(log.bodies)
        other_source = more.replace(
            "{column: email, op: set}", '{expr: "upper(email)", property: email, op: set}'
        )
        code, _, _ = nightly(tmp_path, source, server.url, mapping=other_source)
        assert code == 0
        got = sent_actions(log.bodies[before:])
        assert got["p-3"] == [{"$set": {"email": "USER3@EXAMPLE.COM"}}] and len(got) == 10


def test_missing_unset_clears_only_what_this_tool_set_and_refuses_a_truncated_export(
    tmp_path: Path,
) -> None:
    """--missing unset: a profile gone from the export loses the set and once properties this
    tool delivered (not its list appends, not what it never sent); an export missing more than
    --max-missing-rate of the profiles stops before sending (exit 3)."""
    night1 = rows_of(40)
    night1[0]["plan"] = ""  # never delivered as a value: not cleared
    with emulator(log=True, keep_bodies=True) as (server, log):
        assert log is not None
        nightly(tmp_path, write_rows(tmp_path / "n1.csv", night1), server.url)
        before = len(log.bodies)
        code, second, _ = nightly(
            tmp_path, write_rows(tmp_path / "n2.csv", night1[2:]), server.url, "--missing", "unset"
        )
        assert code == 0 and second["profiles_missing"] == 2
        assert sent_actions(log.bodies[before:]) == {
            "p-0": [{"$unset": ["email", "first_source"]}],
            "p-1": [{"$unset": ["email", "plan", "first_source"]}],
        }
        assert server.profile("p-1", workspace=WORKSPACE) == {"tags": ["a", "b"]}
        before = requests_total(server.stats())
        code, refused, err = nightly(
            tmp_path, write_rows(tmp_path / "n3.csv", night1[20:]), server.url, "--missing", "unset"
        )
        assert (
            code == 3
            and "missing from this import" in refused["error"]
            and "nothing was sent" in err
        )
        assert requests_total(server.stats()) == before


def test_the_state_in_a_bucket_links_runs_from_different_working_directories(
    bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --state s3://…, a second run from another directory (another ledger, no local
    files) sends only what changed."""
    night1, night2 = rows_of(20), rows_of(20)
    night2[4]["email"] = "moved@example.com"
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    mapping = tmp_path / "m.yaml"
    mapping.write_text(SIMPLE)
    state = bucket.url("nightly/state")
    with emulator() as (server, _):
        for where, rows in ((first_dir, night1), (second_dir, night2)):
            source = write_rows(where / "export.csv", rows)
            code, summary, err = invoke(
                [
                    "run",
                    str(source),
                    "-m",
                    str(mapping),
                    "--changed-only",
                    "--state",
                    state,
                    "--json",
                ],
                server.url,
                cwd=where,
            )
            assert code == 0, err
        assert summary["items_sent"] == 1 and summary["state"] == state
        assert (second_dir / "fyno-import.ledger.db").exists()
        assert not (second_dir / "fyno-import.state").exists()


def test_a_state_of_another_target_or_a_damaged_one_is_exit_2(tmp_path: Path) -> None:
    """A state written for another base URL is never used (exit 2, naming both); a damaged one
    is exit 2 with what to do, and --full-resync writes a new one over it; a locked one is exit
    2 naming the holder."""
    source = write_rows(tmp_path / "n.csv", rows_of(3))
    with emulator() as (server, _):
        nightly(tmp_path, source, server.url)
    with emulator() as (other, _):
        code, summary, _ = nightly(tmp_path, source, other.url)
        assert code == 2 and server.url in summary["error"] and other.url in summary["error"]
        manifest = tmp_path / "state" / "manifest.json"
        manifest.write_text("{not json")
        code, summary, err = nightly(tmp_path, source, other.url)
        assert code == 2 and "damaged" in summary["error"] and "--full-resync" in err
        assert requests_total(other.stats()) == 0
        code, summary, _ = nightly(tmp_path, source, other.url, "--full-resync")  # as the hint says
        assert code == 0 and summary["profiles_changed"] == 3 and summary["state_advanced"]
        code, summary, _ = nightly(tmp_path, source, other.url)
        assert code == 0 and summary["items_sent"] == 0 and summary["rows_unchanged"] == 3
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl,sys,time; f=open(sys.argv[1],'a')\n"
                "try: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                "except OSError: print('busy', flush=True); sys.exit()\n"
                "print('held', flush=True); time.sleep(30)",
                str(tmp_path / "state" / "lock"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            code, summary, _ = nightly(tmp_path, source, other.url, "--full-resync")
            assert code == 2 and "in use by another run" in summary["error"]
        finally:
            holder.kill()
            holder.wait()


def test_full_resync_sends_everything_and_rewrites_the_state(tmp_path: Path) -> None:
    """--full-resync sends every row as a full import does; profiles it no longer has leave the
    state, so a later --missing unset does not clear them."""
    with emulator() as (server, _):
        nightly(tmp_path, write_rows(tmp_path / "a.csv", rows_of(10)), server.url)
        code, resync, _ = nightly(
            tmp_path, write_rows(tmp_path / "b.csv", rows_of(6)), server.url, "--full-resync"
        )
        assert code == 0 and resync["profiles_changed"] == 6 and resync["chunks_total"] == 1
        code, after, _ = nightly(tmp_path, tmp_path / "b.csv", server.url, "--missing", "unset")
        assert code == 0 and after["items_sent"] == 0 and after["profiles_missing"] == 0


def test_dry_run_counts_what_would_be_sent_and_advances_nothing(tmp_path: Path) -> None:
    """--dry-run --changed-only reads the state, counts the changed items, sends nothing and
    leaves the state as it was; then the real run sends exactly that."""
    night1, night2 = rows_of(12), rows_of(12)
    night2[0]["email"] = night2[5]["email"] = "x@example.com"
    with emulator() as (server, _):
        nightly(tmp_path, write_rows(tmp_path / "n1.csv", night1), server.url)
        manifest = (tmp_path / "state" / "manifest.json").read_bytes()
        requests = requests_total(server.stats())
        code, dry, _ = nightly(
            tmp_path, write_rows(tmp_path / "n2.csv", night2), server.url, "--dry-run"
        )
        assert code == 0 and dry["items_total"] == 2 and dry["chunks_total"] == 1
        assert dry["profiles_changed"] == 2 and dry["run_id"] is None
        assert (tmp_path / "state" / "manifest.json").read_bytes() == manifest
        assert requests_total(server.stats()) == requests
        code, real, _ = nightly(tmp_path, tmp_path / "n2.csv", server.url)
        assert code == 0 and real["items_sent"] == 2


def test_full_resync_and_missing_unset_need_changed_only(tmp_path: Path) -> None:
    """--full-resync or --missing unset without --changed-only is a usage error (exit 2)."""
    source = write_rows(tmp_path / "n.csv", rows_of(2))
    (tmp_path / "m.yaml").write_text(SIMPLE)
    for extra in (["--full-resync"], ["--missing", "unset"]):
        code, summary, _ = invoke(
            ["run", str(source), "-m", str(tmp_path / "m.yaml"), "--dry-run", "--json", *extra],
            None,
        )
        assert code == 2 and "--changed-only" in summary["error"]


def test_a_state_of_many_partitions_keeps_its_count_and_ends_as_a_full_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state spread over many partitions (as a few million profiles make): night 2's edits,
    deletions and new ids are found in whichever partition holds them, and the profiles equal
    full imports. The partition count is the state's own: a later run with another default
    keeps it, and with nothing changed sends nothing."""
    import importer.sync.state as state

    monkeypatch.setattr(state, "_ROWS_PER_PARTITION", 8)  # 200 rows: 16 to 32 partitions
    night1 = rows_of(200)
    night2 = [dict(r) for r in night1[10:]] + rows_of(15, start=500)  # 10 deleted, 15 new
    for n in range(0, 190, 7):
        night2[n]["email"] = f"edit{n}@example.com"
    edited = {night2[n]["id"] for n in range(0, 190, 7)}
    with emulator() as (server, _):
        code, first, _ = nightly(tmp_path, write_rows(tmp_path / "n1.csv", night1), server.url)
        assert code == 0 and first["profiles_changed"] == 200
        count = json.loads((tmp_path / "state" / "manifest.json").read_text())["partitions"]
        assert count >= 16
        parts = [p for p in (tmp_path / "state").rglob("part-*") if p.is_file()]
        assert len(parts) == count
        code, second, err = nightly(tmp_path, write_rows(tmp_path / "n2.csv", night2), server.url)
        assert code == 0, err
        assert second["profiles_changed"] == len(edited) + 15
        assert second["rows_unchanged"] == 190 - len(edited)
        monkeypatch.setattr(state, "_ROWS_PER_PARTITION", 100_000)  # the default would be 1
        code, third, _ = nightly(tmp_path, tmp_path / "n2.csv", server.url)
        assert code == 0 and third["chunks_total"] == 0 and third["profiles_changed"] == 0
        assert json.loads((tmp_path / "state" / "manifest.json").read_text())["partitions"] == count
        ids = sorted({r["id"] for r in night1 + night2})
        assert profiles_of(server, ids) == full_import([night1, night2])
