"""Write an evaluation report: JSON, a Markdown table and PNG heatmaps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import msgspec

from .runner import Report, ResultRow, SampleResult, aggregate


def markdown_table(rows: Sequence[ResultRow], window: int | None = None) -> str:
    """One line per task x length x method: accuracy, selection recall, evidence rank, time."""
    head = (
        "| task | length | x window | method | accuracy | selection recall | accuracy when selected "
        "| median evidence rank | samples | seconds |"
    )
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r.length / window:.1f}" if window else ""
        recall = "" if r.selection_recall is None else f"{r.selection_recall:.2f}"
        when = "" if r.accuracy_when_selected is None else f"{r.accuracy_when_selected:.2f} of {r.selected}"
        accuracy = "not read" if r.accuracy is None else f"{r.accuracy:.2f}"
        rank = "" if r.median_evidence_rank is None else f"{r.median_evidence_rank:g}"
        lines.append(
            f"| {r.task} | {r.length:,} | {ratio} | {r.method} | {accuracy} | {recall} | {when} | {rank} | "
            f"{r.samples} | {r.seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def merge_reports(reports: Sequence[Report]) -> Report:
    """One report from runs of the same evaluation split over seeds (or machines): their samples
    together, aggregated again. The runs must share model, reader and engine settings; two runs
    with the same sample (task, length, method, seed, depth) are refused, not double-counted, and
    so are runs of a real-text task over different corpora (their samples are not the same task)."""
    if not reports:
        raise ValueError("nothing to merge")
    first = reports[0]
    for r in reports[1:]:
        if (r.model, r.reader, r.config.get("engine")) != (first.model, first.reader, first.config.get("engine")):
            raise ValueError("these reports used different models or engine settings: they do not merge")
    corpora: dict[str, object] = {}
    for r in reports:
        for task, identity in r.corpora.items():
            if corpora.setdefault(task, identity) != identity:
                raise ValueError(f"these reports ran {task} over different corpora: they do not merge")
    samples = [s for r in reports for s in r.samples]
    keys = [(s.task, s.length, s.method, s.seed, s.depth) for s in samples]
    if len(set(keys)) != len(keys):
        raise ValueError("the reports share samples (the same task, length, method, seed and depth)")
    config = {**first.config, "seed": sorted({r.config.get("seed") for r in reports})}
    machines = sorted({r.machine for r in reports})
    return Report(
        model=first.model,
        window=first.window,
        machine="; ".join(machines),
        config=config,
        results=aggregate(samples),
        samples=samples,
        seconds=sum(r.seconds for r in reports),
        reader=first.reader,
        reader_window=first.reader_window,
        corpora=corpora,
    )


def losses(rows: Sequence[ResultRow], method: str = "xl3m") -> list[str]:
    """Every task x length where ``method`` is beaten by another method (accuracy or recall)."""
    out = []
    by_key: dict[tuple[str, int], dict[str, ResultRow]] = {}
    for r in rows:
        by_key.setdefault((r.task, r.length), {})[r.method] = r
    for (task, length), group in sorted(by_key.items()):
        mine = group.get(method)
        if mine is None:
            continue
        for other, r in group.items():
            if other == method:
                continue
            worse_acc = (r.accuracy or 0) > (mine.accuracy or 0)
            worse_rec = (r.selection_recall or 0) > (mine.selection_recall or 0)
            if worse_acc or worse_rec:
                out.append(
                    f"{task} @ {length:,}: {other} {r.accuracy or 0:.2f} acc / {r.selection_recall or 0:.2f} recall "
                    f"vs {method} {mine.accuracy or 0:.2f} / {mine.selection_recall or 0:.2f}"
                )
    return out


def heatmaps(samples: Sequence[SampleResult], path: Path, *, value: str = "accuracy") -> list[Path]:
    """One PNG per task: ``value`` by depth (rows) x length (columns), methods side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    tasks = sorted({s.task for s in samples})
    for task in tasks:
        rows = [s for s in samples if s.task == task]
        methods = list(dict.fromkeys(s.method for s in rows))
        lengths = sorted({s.length for s in rows})
        depths = sorted({_bucket(s.depth) for s in rows})
        fig, axes = plt.subplots(
            1, len(methods), figsize=(2.2 + 1.6 * len(lengths) * len(methods), 1.2 + 0.35 * len(depths)), squeeze=False
        )
        for ax, method in zip(axes[0], methods, strict=True):
            grid = [[math.nan] * len(lengths) for _ in depths]
            for i, d in enumerate(depths):
                for j, n in enumerate(lengths):
                    cell = [
                        getattr(s, value)
                        for s in rows
                        if s.method == method and s.length == n and _bucket(s.depth) == d
                    ]
                    cell = [c for c in cell if c is not None]
                    if cell:
                        grid[i][j] = sum(cell) / len(cell)
            ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set_title(method, fontsize=9)
            ax.set_xticks(range(len(lengths)), [_short(n) for n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
            ax.set_xlabel("tokens", fontsize=8)
            for i in range(len(depths)):
                for j in range(len(lengths)):
                    if not math.isnan(grid[i][j]):
                        ax.text(j, i, f"{grid[i][j]:.1f}", ha="center", va="center", fontsize=6)
        axes[0][0].set_ylabel("depth", fontsize=8)
        fig.suptitle(f"{task}: {value.replace('_', ' ')} by depth x length", fontsize=10)
        fig.tight_layout()
        out = path / f"heatmap_{task}_{value}.png"
        fig.savefig(out, dpi=120)
        plt.close(fig)
        written.append(out)
    return written


def write_report(report: Report, directory: str | Path) -> list[Path]:
    """Write ``results.json``, ``results.md`` and heatmaps into ``directory``; return the paths."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"report path exists and is not a directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2))
    md = [
        f"# Evaluation: {report.model} (window {report.window:,} tokens)"
        + (f", read by {report.reader} (window {report.reader_window:,})" if report.reader else "")
        + "\n",
        f"Machine: {report.machine}. Wall time: {report.seconds:.0f} s.\n",
        markdown_table(report.results, report.window),
    ]
    lost = losses(report.results)
    if lost:
        md.append("\nWhere xl3m loses to another method:\n\n" + "\n".join(f"- {line}" for line in lost) + "\n")
    paths[1].write_text("\n".join(md), encoding="utf-8")
    paths.append(overview(report.results, out / "overview.png"))
    paths += heatmaps(report.samples, out, value="accuracy")
    paths += heatmaps(report.samples, out, value="selection_recall")
    return paths


def overview(rows: Sequence[ResultRow], path: Path) -> Path:
    """One picture of the whole report: method (rows) x task @ length (columns), accuracy on the
    left and selection recall on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in rows))
    columns = sorted({(r.task, r.length) for r in rows})
    cell = {(r.method, r.task, r.length): r for r in rows}
    fig, axes = plt.subplots(
        1, 2, figsize=(3 + 1.3 * len(columns), 1.4 + 0.32 * len(methods)), squeeze=False, sharey=True
    )
    for ax, value in zip(axes[0], ("accuracy", "selection_recall"), strict=True):
        grid = [[math.nan] * len(columns) for _ in methods]
        for i, m in enumerate(methods):
            for j, (task, length) in enumerate(columns):
                r = cell.get((m, task, length))
                v = None if r is None else getattr(r, value)
                if v is not None:
                    grid[i][j] = v
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_title(value.replace("_", " "), fontsize=9)
        ax.set_xticks(range(len(columns)), [f"{t}\n{_short(n)}" for t, n in columns], fontsize=7)
        ax.set_yticks(range(len(methods)), methods, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _bucket(depth: float | None) -> float:
    return round(depth if depth is not None else 0.5, 1)


def _short(n: int) -> str:
    """A length as a tick label: 4000 -> 4k, 16384 -> 16.4k, 262144 -> 262k, 1048576 -> 1.05M."""
    return f"{n / 1_000_000:.3g}M" if n >= 999_500 else f"{n / 1000:.3g}k"
