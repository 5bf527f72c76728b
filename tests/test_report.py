"""Evaluation reports: aggregation, the Markdown table, losses, and the files written."""

from __future__ import annotations

import msgspec
import pytest

from xl3m_stream.evaluate.report import _short, losses, markdown_table, write_report
from xl3m_stream.evaluate.runner import Report, SampleResult, aggregate


def sample(
    method: str, accuracy: float, recall: float | None, *, depth: float = 0.5, length: int = 16384
) -> SampleResult:
    return SampleResult(
        task="needle",
        length=length,
        tokens=length,
        method=method,
        seed=0,
        depth=depth,
        accuracy=accuracy,
        selection_recall=recall,
        evidence_rank=1 if recall else None,
        answer="x",
        context_tokens=512,
        seconds=2.0,
    )


SAMPLES = [
    sample("xl3m", 1.0, 1.0, depth=0.2),
    sample("xl3m", 0.0, 1.0, depth=0.8),
    sample("bm25", 1.0, 1.0, depth=0.2),
    sample("bm25", 1.0, 1.0, depth=0.8),
    sample("truncate", 0.0, 0.0, depth=0.2),
    sample("truncate", 0.0, 0.0, depth=0.8),
]


def test_aggregate_means_per_method_in_method_order() -> None:
    rows = aggregate(SAMPLES)
    assert [r.method for r in rows] == ["xl3m", "truncate", "bm25"]
    xl3m = rows[0]
    assert (xl3m.accuracy, xl3m.selection_recall, xl3m.samples, xl3m.seconds) == (0.5, 1.0, 2, 4.0)
    assert xl3m.median_evidence_rank == 1
    # answers apart from selection: both xl3m samples selected the evidence, one was answered
    assert (xl3m.selected, xl3m.accuracy_when_selected) == (2, 0.5)
    truncate = rows[1]
    assert (truncate.selected, truncate.accuracy_when_selected) == (0, None)


def test_merged_reports_aggregate_their_samples_together_and_refuse_overlap() -> None:
    from xl3m_stream.evaluate.report import merge_reports

    def report(samples: list[SampleResult], seed: int) -> Report:
        return Report(
            model="tiny",
            window=8192,
            machine="m",
            config={"seed": seed, "engine": {"model": "tiny"}},
            results=aggregate(samples),
            samples=samples,
            seconds=1.0,
        )

    later = [msgspec.structs.replace(s, seed=7) for s in SAMPLES]
    merged = merge_reports([report(SAMPLES, 0), report(later, 7)])
    assert merged.results == aggregate([*SAMPLES, *later]) and merged.seconds == 2.0
    assert merged.config["seed"] == [0, 7] and len(merged.samples) == 12
    with pytest.raises(ValueError, match="share samples"):
        merge_reports([report(SAMPLES, 0), report(SAMPLES, 0)])
    other = report(later, 7)
    other.config = {"seed": 7, "engine": {"model": "bigger"}}
    with pytest.raises(ValueError, match="different models or engine settings"):
        merge_reports([report(SAMPLES, 0), other])
    # a real-text task over another corpus is another task: refused, not averaged in
    mine, theirs = report(SAMPLES, 0), report(later, 7)
    mine.corpora = {"prose-lexical": {"sha256": "a"}}
    theirs.corpora = {"prose-lexical": {"sha256": "b"}}
    with pytest.raises(ValueError, match="prose-lexical over different corpora"):
        merge_reports([mine, theirs])
    theirs.corpora = {"prose-lexical": {"sha256": "a"}, "log-real": {"sha256": "c"}}
    assert merge_reports([mine, theirs]).corpora == theirs.corpora


def test_table_and_losses_name_where_xl3m_is_beaten() -> None:
    rows = aggregate(SAMPLES)
    table = markdown_table(rows, window=8192)
    assert "| needle | 16,384 | 2.0 | xl3m | 0.50 | 1.00 | 0.50 of 2 | 1 | 2 | 4.0 |" in table
    lost = losses(rows)
    assert len(lost) == 1 and lost[0].startswith("needle @ 16,384: bm25 1.00 acc")
    assert losses(aggregate([s for s in SAMPLES if s.method != "bm25"])) == []


def test_write_report_writes_json_markdown_and_png(tmp_path) -> None:
    report = Report(
        model="tiny", window=8192, machine="test", config={}, results=aggregate(SAMPLES), samples=SAMPLES, seconds=12.0
    )
    paths = write_report(report, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == [
        "heatmap_needle_accuracy.png",
        "heatmap_needle_selection_recall.png",
        "overview.png",
        "results.json",
        "results.md",
    ]
    back = msgspec.json.decode((tmp_path / "out" / "results.json").read_bytes(), type=Report)
    assert back.samples == SAMPLES
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Where xl3m loses" in md and "bm25" in md
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_refuses_a_file_as_directory(tmp_path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    report = Report(model="m", window=1, machine="t", config={}, results=[], samples=[], seconds=0.0)
    with pytest.raises(NotADirectoryError):
        write_report(report, f)


@pytest.mark.parametrize(
    ("n", "label"),
    [(1500, "1.5k"), (4000, "4k"), (16384, "16.4k"), (262144, "262k"), (999_878, "1M"), (2**20, "1.05M")],
)
def test_length_labels(n: int, label: str) -> None:
    assert _short(n) == label
