"""A state directory written by an earlier version of the code is recovered exactly as that
version recovered it: the on-disk format and the replay do not drift when the code moves.

The fixture (tests/fixtures/state_v2/) and its expected recovery were written by
tests/fixtures/make_state_fixture.py at the commit that added them; never regenerate them to
make this test pass.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixtures.make_state_fixture import EXPECTED, FIXTURE, summary

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_the_fixture_state_recovers_as_it_did(tiny_model_dir: Path, tmp_path: Path) -> None:
    expected = json.loads(EXPECTED.read_text())
    copy = tmp_path / "state"
    shutil.copytree(FIXTURE, copy)  # recovery writes (a snapshot at close): never touch the fixture
    got = await summary(tiny_model_dir, copy)
    scores, want_scores = got.pop("store_scores"), expected.pop("store_scores")
    assert got == expected
    assert scores == pytest.approx(want_scores, abs=1e-4)  # the replayed segments are scored again


async def test_the_fixture_is_what_its_log_says(tmp_path: Path) -> None:
    """Read-only readers agree with the fixture too (no model: the log and the snapshot alone)."""
    from xl3m_stream.persistence import read_snapshot, read_stream

    expected = json.loads(EXPECTED.read_text())
    contents = read_stream(FIXTURE)
    assert [[s.seq, s.start, s.end, s.meta] for s in contents.segments] == expected["segments"]
    assert contents.ids == expected["ids"]
    snap = read_snapshot(FIXTURE)
    assert snap is not None and snap.log_records < contents.records  # records after the snapshot: replayed
