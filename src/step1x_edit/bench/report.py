"""A Markdown and HTML report comparing models on GEdit-Bench: score tables, per-task bar charts, example grids.

:func:`write_report` takes one scores file per model and writes into a directory:

- ``report.md`` and ``report.html``: per language, a table of G_SC / G_PQ / G_O averages with 95% intervals and
  failure counts, and a per-task table of G_O (full set);
- ``scores_<lang>.png``: bar charts of SC, PQ and O per task group, one bar per model, 95% intervals as error bars;
- ``examples/<task>.png`` (when samples and results directories are given): rows of source | edit per model.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from PIL import Image, ImageDraw

from .dataset import GEditSample
from .layout import find_edited_image
from .stats import GEditStatistics, compute_statistics, read_scores

METRICS = ("SC", "PQ", "O")
THUMBNAIL_HEIGHT = 192


def plot_scores(stats: dict[str, GEditStatistics], language: str, path: Path, subset: str = "full") -> None:
    """Grouped bar charts (one panel per metric) of every task group's mean, one bar per model, with the 95%
    bootstrap intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = sorted({g for s in stats.values() for g in s.scores.get(language, {}).get(subset, {})} - {"average"})
    groups.append("average")
    figure, axes = plt.subplots(len(METRICS), 1, figsize=(max(8, 0.9 * len(groups) * max(1, len(stats)) / 2), 9), sharex=True)
    width = 0.8 / max(1, len(stats))
    positions = np.arange(len(groups))
    for m, (name, stat) in enumerate(stats.items()):
        means = stat.scores.get(language, {}).get(subset, {})
        ci = stat.ci95.get(language, {}).get(subset, {})
        for j, axis in enumerate(axes):
            values = np.array([means[g][j] if g in means else np.nan for g in groups])
            bounds = np.array([ci[g][j] if g in ci else [np.nan, np.nan] for g in groups])  # (groups, 2)
            errors = np.abs(np.stack([values - bounds[:, 0], bounds[:, 1] - values]))  # (2, groups)
            offset = (m - (len(stats) - 1) / 2) * width
            axis.bar(positions + offset, values, width, yerr=errors, capsize=2, label=name)
    for j, axis in enumerate(axes):
        axis.set_ylabel(f"G_{METRICS[j]}")
        axis.set_ylim(0, 10)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_title(f"GEdit-Bench-{language.upper()} ({subset} set)")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1].set_xticks(positions, groups, rotation=35, ha="right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _thumbnail(image: Image.Image) -> Image.Image:
    width = max(1, round(image.width * THUMBNAIL_HEIGHT / image.height))
    return image.convert("RGB").resize((width, THUMBNAIL_HEIGHT))


def example_grid(samples: list[GEditSample], results_dirs: dict[str, str | os.PathLike]) -> Image.Image:
    """One row per sample: the source, then each model's edit (grey where a model has none), labelled."""
    label_height = 18
    rows = []
    for sample in samples:
        cells = [("source", _thumbnail(sample.input_image))]
        for name, directory in results_dirs.items():
            path = find_edited_image(directory, sample)
            if path is None:
                cells.append((f"{name} (missing)", Image.new("RGB", cells[0][1].size, (128, 128, 128))))
            else:
                with Image.open(path) as edited:
                    cells.append((name, _thumbnail(edited)))
        rows.append(cells)
    width = max(sum(image.width for _, image in row) for row in rows)
    grid = Image.new("RGB", (width, len(rows) * (THUMBNAIL_HEIGHT + label_height)), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        x, y = 0, r * (THUMBNAIL_HEIGHT + label_height)
        for label, image in row:
            draw.text((x + 2, y + 2), label, fill="black")
            grid.paste(image, (x, y + label_height))
            x += image.width
    return grid


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tables(stats: dict[str, GEditStatistics], language: str) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    for subset in ("full", "intersection"):
        rows = []
        for name, stat in stats.items():
            means = stat.scores.get(language, {}).get(subset, {})
            if "average" not in means:
                continue
            ci = stat.ci95[language][subset].get("average")
            total = stat.counts[language][subset]["total"]
            cells = [f"{v:.3f}" for v in means["average"]]
            interval = f"[{ci[2][0]:.3f}, {ci[2][1]:.3f}]" if ci else "-"
            rows.append([name, *cells, interval, str(total["scored"]), str(total["failed"])])
        if rows:
            header = ["model", "G_SC", "G_PQ", "G_O", "G_O 95% CI", "scored", "failed"]
            tables.append((f"{subset} set, macro average over task groups", header, rows))
    groups = sorted({g for s in stats.values() for g in s.scores.get(language, {}).get("full", {})} - {"average"})
    rows = []
    for name, stat in stats.items():
        means = stat.scores.get(language, {}).get("full", {})
        counts = stat.counts.get(language, {}).get("full", {})
        cells = []
        for group in groups:
            failed = counts.get(group, {}).get("failed", 0)
            value = f"{means[group][2]:.3f}" if group in means else "-"
            cells.append(value + (f" ({failed} failed)" if failed else ""))
        rows.append([name, *cells])
    if groups:
        tables.append(("G_O per task group (full set)", ["model", *groups], rows))
    return tables


def write_report(
    scores: dict[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    samples: list[GEditSample] | None = None,
    results_dirs: dict[str, str | os.PathLike] | None = None,
    examples_per_task: int = 2,
    bootstrap: int = 1000,
) -> Path:
    """Write the report for ``scores`` (model name -> scores file) into ``out_dir``; return ``report.md``.

    Example grids are drawn when ``samples`` and ``results_dirs`` (model name -> ``RESULTS/<name>``) are given:
    the first ``examples_per_task`` samples of each task group, English first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = {name: compute_statistics(read_scores(path), bootstrap=bootstrap) for name, path in scores.items()}
    languages = [lang for lang in ("en", "cn") if any(lang in s.scores for s in stats.values())]
    markdown = ["# GEdit-Bench report", "", f"Models: {', '.join(stats)}.", ""]
    body = [f"<h1>GEdit-Bench report</h1><p>Models: {html.escape(', '.join(stats))}.</p>"]
    for language in languages:
        chart = f"scores_{language}.png"
        plot_scores(stats, language, out_dir / chart)
        markdown += [f"## GEdit-Bench-{language.upper()}", ""]
        body.append(f"<h2>GEdit-Bench-{language.upper()}</h2>")
        for title, header, rows in _tables(stats, language):
            markdown += [f"### {title}", "", _markdown_table(header, rows), ""]
            body.append(f"<h3>{html.escape(title)}</h3>{_html_table(header, rows)}")
        markdown += [f"![per-task scores]({chart})", ""]
        body.append(f'<img src="{chart}" alt="per-task scores">')
    if samples and results_dirs:
        (out_dir / "examples").mkdir(exist_ok=True)
        markdown += ["## Examples (source | edits)", ""]
        body.append("<h2>Examples (source | edits)</h2>")
        ordered = sorted(samples, key=lambda s: (s.language != "en", s.task_type))
        for task in dict.fromkeys(s.task_type for s in ordered):
            chosen = [s for s in ordered if s.task_type == task][:examples_per_task]
            path = f"examples/{task}.png"
            example_grid(chosen, results_dirs).save(out_dir / path)
            markdown += [f"### {task}", "", *[f"- {s.key} ({s.language}): {s.instruction}" for s in chosen], "", f"![{task}]({path})", ""]
            items = "".join(f"<li>{html.escape(f'{s.key} ({s.language}): {s.instruction}')}</li>" for s in chosen)
            body.append(f'<h3>{html.escape(task)}</h3><ul>{items}</ul><img src="{path}" alt="{html.escape(task)}">')
    (out_dir / "report.md").write_text("\n".join(markdown), encoding="utf-8")
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}"
    page = f'<!doctype html><html><head><meta charset="utf-8"><title>GEdit-Bench report</title><style>{style}</style></head><body>{"".join(body)}</body></html>'
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    return out_dir / "report.md"
