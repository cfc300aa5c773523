"""The Fyno emulator, driven over a real socket as the importer and its users drive it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from importer.emulator import EmulatorConfig, EmulatorServer, parse_latency

WS = "ws-1"
AUTH = {"Authorization": "Bearer test-key"}
NOT_ALLOWED = "{} has object/keys that is not allowed"


def batch_path(version: str = "live", workspace: str = WS) -> str:
    return f"/v1/{workspace}/{version}/profiles/properties/batch"


def item(distinct_id: Any, **action: Any) -> dict[str, Any]:
    """One batch item; operators are given without their `$` (set=…, add=…)."""
    return {"distinct_id": distinct_id, "action": {f"${op}": v for op, v in action.items()}}


def send(client: httpx.Client, *items: dict[str, Any], version: str = "live") -> httpx.Response:
    return client.post(batch_path(version), json={"batch": list(items)})


@pytest.fixture(scope="module")
def emulator_shared() -> Iterator[EmulatorServer]:
    """One plain in-memory emulator for the module's fault-free tests."""
    with EmulatorServer(EmulatorConfig(port=0)) as server:
        yield server


@pytest.fixture
def emulator(emulator_shared: EmulatorServer) -> EmulatorServer:
    """The shared emulator, with no profiles and zeroed counters."""
    emulator_shared.reset()
    return emulator_shared


@pytest.fixture
def emulator_client(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    """A client of the shared emulator that sends a key."""
    with httpx.Client(base_url=emulator.url, headers=AUTH, timeout=10) as client:
        yield client


def emulator_with(**options: Any) -> EmulatorServer:
    """An emulator with these options on a free port, started by `with`."""
    return EmulatorServer(EmulatorConfig(port=0, **options))


# --- operators ---------------------------------------------------------------------------------


def test_fyno_api_example_gives_the_documented_profile(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """fyno-api.md's example request answers ok per operator and yields the expected profile."""
    before = item("u-1001", set={"tags": ["trial"], "legacy_score": 7, "credits": 10})
    assert send(emulator_client, before).status_code == 202
    example = {
        "batch": [
            {
                "distinct_id": "u-1001",
                "action": {
                    "$set": {"plan": "pro", "signup": "2024-03-01T10:00:00Z"},
                    "$once": {"first_source": "ads"},
                    "$add": {"logins": 3, "credits": -2.5},
                    "$append": {"tags": "beta"},
                    "$remove": {"tags": "trial"},
                    "$unset": ["legacy_score"],
                },
            }
        ]
    }
    response = emulator_client.post(batch_path(), json=example)
    assert response.status_code == 202
    answer = response.json()
    assert len(answer["request_id"]) == 36
    ops = ["$set", "$once", "$add", "$append", "$remove", "$unset"]
    assert answer["batch"] == [dict.fromkeys(ops, "ok")]
    assert emulator.profile("u-1001") == {
        "tags": ["beta"],
        "credits": 7.5,
        "plan": "pro",
        "signup": "2024-03-01T10:00:00Z",
        "first_source": "ads",
        "logins": 3,
    }


def test_answer_has_one_status_per_operator_carried(emulator_client: httpx.Client) -> None:
    """batch[i] holds exactly the operators item i carried."""
    response = send(
        emulator_client, item("a", set={"x": 1}), item("b", add={"n": 1}, unset=["x"]), item("c")
    )
    assert response.json()["batch"] == [{"$set": "ok"}, {"$add": "ok", "$unset": "ok"}, {}]


def test_operators_apply_in_fixed_order_whatever_the_json_order(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """$set, $once, $add, $append, $remove, $unset apply in that order within one item."""
    action = {
        "$unset": ["gone"],
        "$remove": {"tags": "x"},
        "$append": {"tags": "x"},
        "$add": {"n": 2},
        "$once": {"n": 100, "first": "once"},
        "$set": {"n": 10, "gone": "soon", "first": "set"},
    }
    send(emulator_client, {"distinct_id": "u-1", "action": action})
    assert emulator.profile("u-1") == {"n": 12, "first": "set", "tags": []}


def test_once_sets_only_properties_without_a_value(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """$once writes a missing property and leaves an existing one alone."""
    send(emulator_client, item("u-1", set={"source": "ads"}))
    send(emulator_client, item("u-1", once={"source": "seo", "first_seen": "2024-01-01"}))
    assert emulator.profile("u-1") == {"source": "ads", "first_seen": "2024-01-01"}


def test_add_starts_missing_properties_from_zero(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """$add creates a missing property from 0, decrements with negatives, accepts decimals."""
    send(emulator_client, item("u-1", add={"logins": 3, "credits": -2.5}))
    send(emulator_client, item("u-1", add={"logins": 2, "credits": 1}))
    assert emulator.profile("u-1") == {"logins": 5, "credits": -1.5}


def test_append_keeps_list_values_unique(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """$append creates the list, adds each value once, and keeps earlier values in order."""
    for tag in ["beta", "vip", "beta", 7, 7]:
        send(emulator_client, item("u-1", append={"tags": tag}))
    send(emulator_client, item("u-2", set={"tags": ["a", "b", "a"]}))
    assert emulator.profile("u-1") == {"tags": ["beta", "vip", 7]}
    assert emulator.profile("u-2") == {"tags": ["a", "b"]}


def test_remove_ignores_missing_profile_and_property(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """$remove on a missing profile, property or value is a quiet no-op that creates nothing."""
    response = send(emulator_client, item("ghost", remove={"tags": "x"}))
    assert response.status_code == 202
    assert response.json()["batch"] == [{"$remove": "ok"}]
    send(emulator_client, item("u-1", set={"tags": ["a", "b"]}))
    send(emulator_client, item("u-1", remove={"tags": "zzz", "other": "a"}))
    send(emulator_client, item("u-1", remove={"tags": "a"}))
    assert emulator.profile("ghost") is None
    assert emulator.profile("u-1") == {"tags": ["b"]}
    assert emulator.stats()["items_dropped"] == 0


def test_unset_clears_properties_of_any_type(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """$unset removes strings, numbers, booleans and lists; unknown names are ignored."""
    send(emulator_client, item("u-1", set={"s": "x", "n": 1, "b": True, "l": [1], "keep": "y"}))
    send(emulator_client, item("u-1", unset=["s", "n", "b", "l", "never-set"]))
    assert emulator.profile("u-1") == {"keep": "y"}
    send(emulator_client, item("u-1", set={"n": "now a string"}))  # unset frees the type
    assert emulator.profile("u-1") == {"keep": "y", "n": "now a string"}


def test_wrong_types_are_accepted_and_silently_dropped(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """A value of the wrong type gets 202 "ok", changes nothing, and is counted as dropped."""
    send(emulator_client, item("u-1", set={"plan": "pro", "score": 1, "vip": True, "tags": ["a"]}))
    response = send(
        emulator_client,
        item("u-1", set={"plan": 5}),
        item("u-1", set={"score": "high"}),
        item("u-1", add={"score": "12"}),
        item("u-1", add={"vip": 1}),  # booleans are not numbers
        item("u-1", add={"plan": 1}),
        item("u-1", add={"score": True}),
        item("u-1", append={"plan": "x"}),
        item("u-1", set={"tags": "a"}),
        item("u-1", set={"plan": None}),
    )
    assert response.status_code == 202
    assert all(set(status.values()) == {"ok"} for status in response.json()["batch"])
    assert emulator.profile("u-1") == {"plan": "pro", "score": 1, "vip": True, "tags": ["a"]}
    stats = emulator.stats()
    assert stats["items_dropped"] == 9
    assert stats["items_applied"] == 10


def test_int_and_float_are_one_number_type(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """A decimal may overwrite an integer property (and be added to it): both are numbers."""
    send(emulator_client, item("u-1", set={"score": 1}))
    send(emulator_client, item("u-1", set={"score": 2.5}, add={"score": 1}))
    assert emulator.profile("u-1") == {"score": 3.5}
    assert emulator.stats()["items_dropped"] == 0


def test_strings_over_255_characters_are_dropped(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """255 code points are stored, even multi-byte; 256 are dropped, also in lists and appends."""
    send(
        emulator_client,
        item("u-1", set={"ok": "é" * 255, "emoji": "😀" * 255, "long": "x" * 256}),
        item("u-1", set={"list": ["a", "y" * 256]}),
        item("u-1", append={"tags": "z" * 256}),
        item("u-1", once={"first": "w" * 256}),
    )
    assert emulator.profile("u-1") == {"ok": "é" * 255, "emoji": "😀" * 255}
    assert emulator.stats()["items_dropped"] == 4


# --- errors -----------------------------------------------------------------------------------

BAD_BODIES = {
    "unknown operator": ({"batch": [item("u", inc={"n": 1})]}, NOT_ALLOWED.format("$inc")),
    "append array": ({"batch": [item("u", append={"t": ["a"]})]}, NOT_ALLOWED.format("$append")),
    "append object": (
        {"batch": [item("u", append={"t": {"a": 1}})]},
        NOT_ALLOWED.format("$append"),
    ),
    "remove array": ({"batch": [item("u", remove={"t": ["a"]})]}, NOT_ALLOWED.format("$remove")),
    "add object": ({"batch": [item("u", add={"n": {"a": 1}})]}, NOT_ALLOWED.format("$add")),
    "set not object": ({"batch": [item("u", set=["a"])]}, NOT_ALLOWED.format("$set")),
    "set nested object": ({"batch": [item("u", set={"a": {"b": 1}})]}, NOT_ALLOWED.format("$set")),
    "set nested list": ({"batch": [item("u", set={"a": [[1]]})]}, NOT_ALLOWED.format("$set")),
    "once not object": ({"batch": [item("u", once="a")]}, NOT_ALLOWED.format("$once")),
    "unset not array": ({"batch": [item("u", unset="a")]}, NOT_ALLOWED.format("$unset")),
    "unset non-string": ({"batch": [item("u", unset=[1])]}, NOT_ALLOWED.format("$unset")),
    "unset empty": (
        {"batch": [item("u", unset=[])]},
        "$unset channel should have atleast one item in array",
    ),
    "no action": ({"batch": [{"distinct_id": "u"}]}, NOT_ALLOWED.format("action")),
    "action not object": (
        {"batch": [{"distinct_id": "u", "action": []}]},
        NOT_ALLOWED.format("action"),
    ),
    "extra item key": (
        {"batch": [{"distinct_id": "u", "action": {}, "when": 1}]},
        NOT_ALLOWED.format("when"),
    ),
    "item not object": ({"batch": ["u"]}, NOT_ALLOWED.format("batch")),
    "batch not array": ({"batch": {"distinct_id": "u"}}, NOT_ALLOWED.format("batch")),
    "extra top-level key": ({"batch": [], "dry": True}, NOT_ALLOWED.format("dry")),
    "body not object": ([item("u")], NOT_ALLOWED.format("batch")),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_shapes_are_refused_with_fyno_400_and_nothing_applied(
    case: str, emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """Any wrong shape anywhere in the batch is a 400 with Fyno's body, and no item is applied."""
    body, message = BAD_BODIES[case]
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        body = {**body, "batch": [item("first", set={"applied": True}), *body["batch"]]}
    response = emulator_client.post(batch_path(), json=body)
    assert response.status_code == 400
    assert response.json() == {"_message": message, "status": "error"}
    assert emulator.profile("first") is None
    assert emulator.stats()["items_applied"] == 0
    assert emulator.stats()["requests_by_status"] == {"400": 1}


def test_invalid_json_is_a_400(emulator_client: httpx.Client) -> None:
    """A body that is not JSON is refused with a Fyno-style 400."""
    response = emulator_client.post(batch_path(), content=b'{"batch": [')
    assert response.status_code == 400
    assert response.json()["status"] == "error"


def test_bad_distinct_id_is_a_per_item_error(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """Items without a non-empty string distinct_id get "invalid distinct_id" and are skipped."""
    response = send(
        emulator_client,
        item("u-1", set={"a": 1}),
        item("", set={"a": 1}, add={"n": 1}),
        item(42, set={"a": 1}),
        {"action": {"$set": {"a": 1}}},
    )
    assert response.status_code == 202
    bad = "invalid distinct_id"
    assert response.json()["batch"] == [
        {"$set": "ok"},
        {"$set": bad, "$add": bad},
        {"$set": bad},
        {"$set": bad},
    ]
    assert emulator.profile("u-1") == {"a": 1}
    assert emulator.profile("42") is None
    stats = emulator.stats()
    assert (stats["items_applied"], stats["items_refused"]) == (1, 3)


def test_missing_or_wrong_key_is_401() -> None:
    """With a configured key, a missing, malformed or wrong key gets 401 and nothing is applied."""
    expected = {"_message": "Invalid API details", "status": "error"}
    with emulator_with(api_key="s3cret") as server, httpx.Client(base_url=server.url) as client:
        body = {"batch": [item("u-1", set={"a": 1})]}
        for headers in [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer"},
            {"Authorization": "Basic s3cret"},
            {"Authorization": "s3cret"},
        ]:
            response = client.post(batch_path(), json=body, headers=headers)
            assert response.status_code == 401, headers
            assert response.json() == expected
        ok = client.post(batch_path(), json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 202
        got = client.get(f"/v1/{WS}/live/profiles/u-1", headers={"Authorization": "Bearer no"})
        assert got.status_code == 401
        assert server.stats()["requests_by_status"] == {"401": 5, "202": 1}


def test_any_key_is_accepted_without_a_configured_key(emulator_shared: EmulatorServer) -> None:
    """With api_key None, any non-empty Bearer key passes, and a missing one still gets 401."""
    with httpx.Client(base_url=emulator_shared.url) as client:
        for key in ["a", "another-key"]:
            headers = {"Authorization": f"Bearer {key}"}
            assert client.post(batch_path(), json={"batch": []}, headers=headers).status_code == 202
        assert client.post(batch_path(), json={"batch": []}).status_code == 401


def test_version_other_than_live_or_test_is_refused(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """Version `beta` gets a Fyno-style 400, on writes and reads, and nothing is applied."""
    response = send(emulator_client, item("u-1", set={"a": 1}), version="beta")
    assert response.status_code == 400
    assert response.json()["status"] == "error"
    assert "beta" in response.json()["_message"]
    assert emulator.profile("u-1", version="beta") is None
    assert emulator_client.get(f"/v1/{WS}/beta/profiles/u-1").status_code == 400


def test_live_test_and_workspaces_never_mix(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """A profile written in live is not in test, nor in another workspace, and vice versa."""
    send(emulator_client, item("u-1", set={"env": "live"}))
    send(emulator_client, item("u-1", set={"env": "test"}), version="test")
    emulator_client.post(
        "/v1/ws-2/live/profiles/properties/batch", json={"batch": [item("u-2", set={"w": 2})]}
    )
    assert emulator.profile("u-1") == {"env": "live"}
    assert emulator.profile("u-1", version="test") == {"env": "test"}
    assert emulator.profile("u-2", workspace=WS) is None
    assert emulator.profile("u-2", workspace="ws-2") == {"w": 2}
    assert emulator.profile("u-2") == {"w": 2}  # the one workspace holding it
    assert emulator_client.get(f"/v1/{WS}/test/profiles/u-1").json()["properties"] == {
        "env": "test"
    }


def test_get_profile_answers_properties_or_404(emulator_client: httpx.Client) -> None:
    """GET answers {"distinct_id", "properties"} for a stored profile and 404 otherwise."""
    send(emulator_client, item("user/with space", set={"a": 1}))
    response = emulator_client.get(f"/v1/{WS}/live/profiles/user%2Fwith%20space")
    assert response.status_code == 200
    assert response.json() == {"distinct_id": "user/with space", "properties": {"a": 1}}
    missing = emulator_client.get(f"/v1/{WS}/live/profiles/nobody")
    assert missing.status_code == 404
    assert missing.json()["status"] == "error"


SINGLE_OPS = [
    ("set", {"$set": {"plan": "pro"}}, {"plan": "pro", "tags": ["a", "b"], "n": 1}),
    ("set-once", {"$once": {"n": 5, "src": "x"}}, {"tags": ["a", "b"], "n": 1, "src": "x"}),
    ("numerical-add", {"$add": {"n": 2}}, {"tags": ["a", "b"], "n": 3}),
    ("list-append", {"$append": {"tags": "c"}}, {"tags": ["a", "b", "c"], "n": 1}),
    ("list-remove", {"$remove": {"tags": "a"}}, {"tags": ["b"], "n": 1}),
    ("unset", {"$unset": ["tags"]}, {"n": 1}),
]


@pytest.mark.parametrize(("op", "body", "expected"), SINGLE_OPS, ids=[op for op, *_ in SINGLE_OPS])
def test_single_operator_endpoints(
    op: str,
    body: dict[str, Any],
    expected: dict[str, Any],
    emulator: EmulatorServer,
    emulator_client: httpx.Client,
) -> None:
    """Each single-operator endpoint answers 202 {"request_id"} and applies its operator."""
    send(emulator_client, item("u-1", set={"tags": ["a", "b"], "n": 1}))
    path = f"/v1/{WS}/live/profiles/properties/{op}"
    response = emulator_client.post(path, json={"distinct_id": "u-1", **body})
    assert response.status_code == 202
    assert list(response.json()) == ["request_id"]
    assert emulator.profile("u-1") == expected


def test_single_operator_endpoints_refuse_bad_bodies(emulator_client: httpx.Client) -> None:
    """Single-operator bodies with another operator or no distinct_id are 400; unknown ops 404."""
    path = f"/v1/{WS}/live/profiles/properties/set"
    wrong_op = emulator_client.post(path, json={"distinct_id": "u", "$add": {"n": 1}})
    assert wrong_op.json() == {"_message": NOT_ALLOWED.format("$add"), "status": "error"}
    no_id = emulator_client.post(path, json={"$set": {"n": 1}})
    assert no_id.status_code == 400
    empty_unset = emulator_client.post(
        f"/v1/{WS}/live/profiles/properties/unset", json={"distinct_id": "u", "$unset": []}
    )
    assert empty_unset.json()["_message"] == "$unset channel should have atleast one item in array"
    unknown = emulator_client.post(f"/v1/{WS}/live/profiles/properties/multiply", json={})
    assert unknown.status_code == 404


# --- faults -----------------------------------------------------------------------------------


def test_latency_is_waited_before_answering() -> None:
    """latency_ms delays each answer by at least its minimum."""
    with (
        emulator_with(latency_ms=(150, 200)) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        began = time.perf_counter()
        response = client.post(
            batch_path(), json={"batch": [item("u", set={"a": 1})]}, headers=AUTH
        )
        elapsed = time.perf_counter() - began
        assert response.status_code == 202
        assert 0.15 <= elapsed < 1.0
        assert server.profile("u") == {"a": 1}


def test_fail_rate_one_answers_503_and_applies_nothing() -> None:
    """fail_rate=1.0 answers every write 503 and stores nothing."""
    with (
        emulator_with(fail_rate=1.0) as server,
        httpx.Client(base_url=server.url, headers=AUTH) as client,
    ):
        for _ in range(3):
            assert send(client, item("u", add={"n": 1})).status_code == 503
        assert server.profile("u") is None
        assert server.stats()["requests_by_status"] == {"503": 3}
        assert server.stats()["items_applied"] == 0


def test_rate_limit_answers_429_with_retry_after_and_applies_nothing() -> None:
    """Past a burst of R requests, the excess gets 429 + Retry-After: 1; tokens refill at R/s."""
    with (
        emulator_with(rate_limit=2) as server,
        httpx.Client(base_url=server.url, headers=AUTH) as client,
    ):
        responses = [send(client, item("u", add={"n": 1})) for _ in range(5)]
        statuses = [r.status_code for r in responses]
        assert statuses[:2] == [202, 202]  # the burst
        assert 429 in statuses  # a token comes back only every 0.5 s
        refused = responses[statuses.index(429)]
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["status"] == "error"
        assert server.profile("u") == {"n": statuses.count(202)}
        assert server.stats()["requests_by_status"]["429"] == statuses.count(429)
        time.sleep(0.6)
        assert send(client, item("u", add={"n": 1})).status_code == 202


def test_drop_rate_applies_then_closes_the_connection_unanswered() -> None:
    """drop_rate=1.0: httpx raises RemoteProtocolError, yet the batch was applied (ambiguous)."""
    with (
        emulator_with(drop_rate=1.0) as server,
        httpx.Client(base_url=server.url, headers=AUTH) as client,
    ):
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                send(client, item("u", add={"n": 1}))
        assert server.profile("u") == {"n": 2}
        assert server.stats()["requests_by_status"] == {"dropped": 2}


def fault_statuses(server: EmulatorServer, count: int) -> list[int | str]:
    outcomes: list[int | str] = []
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        for _ in range(count):
            try:
                outcomes.append(send(client, item("u", set={"a": 1})).status_code)
            except httpx.RemoteProtocolError:
                outcomes.append("dropped")
    return outcomes


def test_seed_makes_fault_draws_reproducible() -> None:
    """Two emulators with one seed fail and drop the same requests; reset replays the draws."""
    options = {"fail_rate": 0.4, "drop_rate": 0.3}
    with emulator_with(seed=7, **options) as first, emulator_with(seed=7, **options) as second:
        runs = [fault_statuses(first, 30), fault_statuses(second, 30)]
        first.reset()
        runs.append(fault_statuses(first, 30))
    with emulator_with(seed=8, **options) as other:
        different = fault_statuses(other, 30)
    assert runs[0] == runs[1] == runs[2]
    assert {503, 202, "dropped"} <= set(runs[0])
    assert different != runs[0]


# --- counters ---------------------------------------------------------------------------------


async def concurrent_posts(url: str, bodies: list[dict[str, Any]]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=10) as client:
        responses = await asyncio.gather(*(client.post(batch_path(), json=b) for b in bodies))
    return [r.status_code for r in responses]


def test_stats_count_requests_in_flight_overall_and_per_distinct_id() -> None:
    """max_in_flight counts overlapping requests; the per-id peak shows one profile's overlaps."""
    with emulator_with(latency_ms=(300, 300)) as server:
        apart = [{"batch": [item(f"u-{i}", add={"n": 1})]} for i in range(5)]
        assert asyncio.run(concurrent_posts(server.url, apart)) == [202] * 5
        stats = server.stats()
        assert stats["max_in_flight"] == 5
        assert stats["max_in_flight_per_distinct_id"] == 1

        server.reset()
        # Three requests share "same", two of them also "pair": the peak is the three.
        shared = [
            {"batch": [item("same", add={"n": 1}), item("pair", add={"n": 1})]},
            {"batch": [item("same", add={"n": 1}), item("pair", add={"n": 1})]},
            {"batch": [item("same", add={"n": 1}), item("x", add={"n": 1})]},
            {"batch": [item("alone", add={"n": 1})]},
        ]
        assert asyncio.run(concurrent_posts(server.url, shared)) == [202] * 4
        stats = server.stats()
        assert stats["max_in_flight"] == 4
        assert stats["max_in_flight_per_distinct_id"] == 3
        assert server.profile("same") == {"n": 3}


def test_stats_endpoint_reports_the_counters(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """GET /_emulator/stats (no key needed) reports statuses, items, drops and operators."""
    send(
        emulator_client, item("u-1", set={"a": 1}, add={"n": 1}), item("u-2", set={"a": "x" * 300})
    )
    send(emulator_client, item("u-1", unset=[]))
    with httpx.Client(base_url=emulator.url) as anonymous:
        stats = anonymous.get("/_emulator/stats").json()
    assert stats == {
        "requests_by_status": {"202": 1, "400": 1},
        "items_applied": 2,
        "items_dropped": 1,
        "items_refused": 0,
        "ops_applied": {"$set": 2, "$once": 0, "$add": 1, "$append": 0, "$remove": 0, "$unset": 0},
        "max_in_flight": 1,
        "max_in_flight_per_distinct_id": 1,
    }
    assert stats == emulator.stats()


def test_reset_clears_profiles_and_counters(
    emulator: EmulatorServer, emulator_client: httpx.Client
) -> None:
    """POST /_emulator/reset (no key needed) forgets every profile and zeroes the counters."""
    send(emulator_client, item("u-1", set={"a": 1}))
    with httpx.Client(base_url=emulator.url) as anonymous:
        assert anonymous.post("/_emulator/reset").status_code == 200
    assert emulator.profile("u-1") is None
    stats = emulator.stats()
    assert stats["requests_by_status"] == {}
    assert stats["items_applied"] == 0
    assert stats["max_in_flight"] == 0


# --- stores and lifecycle -------------------------------------------------------------------


def test_sqlite_profiles_persist_after_stop_and_restart(tmp_path: Path) -> None:
    """With db, profiles are sqlite3 rows after stop, and a restart continues from them."""
    db = tmp_path / "emulator.db"
    with emulator_with(db=db) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
        send(client, item("u-1", set={"plan": "pro"}, add={"n": 1}), item("u-2", append={"t": "a"}))
        send(client, item("u-1", set={"plan": "x" * 256}), version="test")
        send(client, item("u-1", append={"tags": "vip"}, unset=["plan"]), item("", set={"a": 1}))
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT workspace, version, distinct_id, json(properties) FROM profiles ORDER BY 3"
        ).fetchall()
    assert rows == [
        (WS, "live", "u-1", '{"n":1,"tags":["vip"]}'),
        (WS, "live", "u-2", '{"t":["a"]}'),
    ]
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    with emulator_with(db=db) as again, httpx.Client(base_url=again.url, headers=AUTH) as client:
        send(client, item("u-1", add={"n": 2}))
        assert again.profile("u-1") == {"n": 3, "tags": ["vip"]}
        assert client.get(f"/v1/{WS}/live/profiles/u-2").json()["properties"] == {"t": ["a"]}


def test_sqlite_refused_request_leaves_the_database_unchanged(tmp_path: Path) -> None:
    """A 400 in SQLite mode writes nothing, and the next good request is applied."""
    with emulator_with(db=tmp_path / "e.db") as server:
        with httpx.Client(base_url=server.url, headers=AUTH) as client:
            bad = send(client, item("u-1", set={"a": 1}), item("u-2", unset=[]))
            assert bad.status_code == 400
            assert send(client, item("u-3", set={"a": 1})).status_code == 202
        assert server.profile("u-1") is None
        assert server.profile("u-3") == {"a": 1}


def test_sink_counts_items_and_stores_nothing() -> None:
    """sink answers like Fyno, counts items, operators and drops, and keeps no profile."""
    with (
        emulator_with(sink=True) as server,
        httpx.Client(base_url=server.url, headers=AUTH) as client,
    ):
        response = send(
            client, item("u-1", set={"a": 1}, add={"n": 1}), item("u-2", set={"a": "x" * 256})
        )
        assert response.json()["batch"] == [{"$set": "ok", "$add": "ok"}, {"$set": "ok"}]
        assert send(client, item("u-1", unset=[])).status_code == 400
        assert client.get(f"/v1/{WS}/live/profiles/u-1").status_code == 404
        assert server.profile("u-1") is None
        stats = server.stats()
        assert (stats["items_applied"], stats["items_dropped"]) == (2, 1)
        assert stats["ops_applied"]["$set"] == 2


def test_stop_frees_the_port() -> None:
    """After stop, nothing answers on the port, and a new emulator can bind that same port."""
    server = emulator_with()
    server.start()
    port = int(server.url.rsplit(":", 1)[1])
    with httpx.Client(headers=AUTH) as client:
        assert client.get(f"{server.url}/_emulator/stats").status_code == 200
        server.stop()
        with pytest.raises(httpx.ConnectError):
            client.get(f"{server.url}/_emulator/stats")
    with EmulatorServer(EmulatorConfig(port=port)) as again:
        assert again.url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{again.url}/_emulator/stats").status_code == 200


def test_port_in_use_fails_start_in_the_callers_thread() -> None:
    """Starting on a port another socket listens on raises OSError at once."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EmulatorServer(EmulatorConfig(port=taken.getsockname()[1]))
        with pytest.raises(OSError):
            server.start()


def test_serve_runs_in_the_foreground_until_sigterm(tmp_path: Path) -> None:
    """serve() reports its real URL once bound, serves, and returns cleanly on SIGTERM."""
    script = (
        "import sys\n"
        "from importer.emulator import EmulatorConfig, serve\n"
        "serve(EmulatorConfig(port=0, db=sys.argv[1]), lambda url: print(url, flush=True))\n"
        "print('stopped', flush=True)\n"
    )
    db = tmp_path / "serve.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        with httpx.Client(base_url=url, headers=AUTH) as client:
            assert send(client, item("u-1", set={"a": 1})).status_code == 202
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read().strip() == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT distinct_id FROM profiles").fetchall() == [("u-1",)]


# --- configuration --------------------------------------------------------------------------


def test_parse_latency() -> None:
    """--latency-ms takes MIN or MIN-MAX milliseconds and explains anything else."""
    assert parse_latency("50") == (50, 50)
    assert parse_latency("10-80") == (10, 80)
    for bad in ["", "fast", "80-10", "-5", "1-2-3", "1.5"]:
        with pytest.raises(ValueError, match="latency"):
            parse_latency(bad)


@pytest.mark.parametrize(
    "options",
    [
        {"fail_rate": 1.5},
        {"drop_rate": -0.1},
        {"rate_limit": -1},
        {"latency_ms": (80, 10)},
        {"port": 70000},
        {"api_key": ""},
        {"sink": True, "db": Path("x.db")},
    ],
)
def test_config_refuses_impossible_options(options: dict[str, Any]) -> None:
    """EmulatorConfig refuses out-of-range rates, latencies, ports and contradictory modes."""
    with pytest.raises(ValueError):
        EmulatorConfig(**options)
