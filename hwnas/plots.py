"""Pictures a person would rather look at than read: architecture weights over the epochs, derived cells."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from hwnas.archs.genotype import Genotype  # noqa: E402

SHORT = {"none": "none", "max_pool_3x3": "max", "avg_pool_3x3": "avg", "skip_connect": "skip",
         "sep_conv_3x3": "sep3", "sep_conv_5x5": "sep5", "dil_conv_3x3": "dil3", "dil_conv_5x5": "dil5",
         "sep_conv_7x7": "sep7", "conv_7x1_1x7": "c7x1"}


def _edge_labels(n_rows: int) -> list[str]:
    """`j->i` for the edges of a cell when the row count is a cell's edge count, else row numbers."""
    labels, node = [], 2
    while len(labels) < n_rows:
        labels += [f"{j}->{node}" for j in range(node)]
        node += 1
    return labels[:n_rows] if len(labels) == n_rows else [str(i) for i in range(n_rows)]


def _short(op: str) -> str:
    return SHORT.get(op, op.removeprefix("mbconv_"))


def _panel(weights: Any, column_names: Sequence[str] | None) -> tuple[list[list[float]], list[str], list[str]]:
    """(matrix, row labels, column labels) of one kind of weights: a matrix, a vector (one column), or a
    method's labelled `{"values", "rows", "columns"}`. Unlabelled rows are a cell's edges, columns
    `column_names` when they fit."""
    rows = columns = None
    if isinstance(weights, dict):
        weights, rows, columns = weights["values"], weights.get("rows"), weights.get("columns")
    matrix = weights if isinstance(weights[0], list) else [[v] for v in weights]
    if columns is None and column_names and len(column_names) == len(matrix[0]):
        columns = column_names
    return (matrix, rows or _edge_labels(len(matrix)),
            [_short(n) for n in columns] if columns else [str(i) for i in range(len(matrix[0]))])


def plot_arch_weights(history: Sequence[dict[str, Any]], out_dir: Path, max_panels: int = 6,
                      column_names: Sequence[str] | None = None) -> list[Path]:
    """One heatmap file per kind of architecture weights (normal, reduce, betas, head, stack, ...), with
    panels for up to `max_panels` epochs spread over the search, so the drift of the weights is visible.
    Axes are named by the method's labels (see `SearchMethod.arch_weights`), else as `_panel` says."""
    rows = [r for r in history if r.get("arch_weights")]
    if not rows:
        return []
    n = min(max_panels, len(rows))  # spread from the first epoch to the last
    picks = sorted({round(i * (len(rows) - 1) / max(1, n - 1)) for i in range(n)})
    snapshots = [(rows[i], json.loads(rows[i]["arch_weights"])) for i in picks]
    written = []
    for kind in snapshots[-1][1]:
        panels = [(row, _panel(w[kind], column_names)) for row, w in snapshots if kind in w]
        values = [v for _, (matrix, _, _) in panels for r in matrix for v in r]
        n_rows = max(len(matrix) for _, (matrix, _, _) in panels)
        # tall enough that every row's label stays legible (a DenseNAS space has ~50 branches)
        fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels) + 2, max(4.5, 0.13 * n_rows + 1.5)),
                                 squeeze=False, layout="constrained")
        for i, (ax, (row, (matrix, row_labels, column_labels))) in enumerate(zip(axes[0], panels)):
            # one colour scale for all panels, spanning the values seen, so the drift shows
            image = ax.imshow(matrix, cmap="viridis", vmin=min(values), vmax=max(values), aspect="auto")
            ax.set_title(f"{row.get('stage', '')} ep {row['epoch']}", fontsize=8)
            # row labels on the first panel only: the panels share their rows
            ax.set_yticks(range(len(matrix)), row_labels if i == 0 else [], fontsize=6)
            ax.set_xticks(range(len(matrix[0])), column_labels, fontsize=6, rotation=90)
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
        fig.suptitle(f"architecture weights: {kind}")
        path = out_dir / f"arch_weights_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def draw_cell(pairs: Sequence[tuple[str, int]], concat: Sequence[int], title: str, path: Path) -> Path:
    """The cell as a small graph: inputs c_{k-2}, c_{k-1} on the left, nodes, the concat output."""
    nodes = len(pairs) // 2
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for i in range(nodes):
        pos[2 + i] = (1.0 + i, 1.2 * (-1) ** i * (0.4 + 0.15 * i))
    out = ("out", (nodes + 1.2, 0.0))
    fig, ax = plt.subplots(figsize=(1.7 * (nodes + 2), 3.6))
    for k, (op, src) in enumerate(pairs):
        (x0, y0), (x1, y1) = pos[src], pos[2 + k // 2]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="tab:blue", shrinkA=12, shrinkB=12,
                                    connectionstyle=f"arc3,rad={0.15 if k % 2 else -0.15}"))
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + (0.12 if k % 2 else -0.12), SHORT.get(op, op), fontsize=7,
                ha="center", color="tab:blue")
    for state in concat:
        (x0, y0) = pos[state]
        ax.annotate("", xy=out[1], xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="0.6", shrinkA=12, shrinkB=12, linestyle="--"))
    labels = {0: "c_{k-2}", 1: "c_{k-1}", **{2 + i: str(2 + i) for i in range(nodes)}}
    for state, (x, y) in pos.items():
        ax.text(x, y, labels[state], ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", fc="lightyellow" if state < 2 else "lightblue"))
    ax.text(*out[1], "c_{k}", ha="center", va="center", fontsize=8, bbox=dict(boxstyle="round", fc="palegreen"))
    ax.set_xlim(-0.5, nodes + 1.7)
    ax.set_ylim(-1.6, 1.6)
    ax.axis("off")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_genotype(genotype: Genotype, out_dir: Path) -> list[Path]:
    paths = [draw_cell(genotype.normal, genotype.normal_concat, "normal cell", out_dir / "cell_normal.png")]
    if genotype.reduce is not None:
        paths.append(draw_cell(genotype.reduce, genotype.reduce_concat, "reduction cell", out_dir / "cell_reduce.png"))
    return paths


def plot_predicted_vs_measured(predicted: Sequence[float], measured: Sequence[float], path: Path, title: str) -> Path:
    """Scatter of table predictions against end-to-end measurements, with the +-10% band."""
    fig, ax = plt.subplots(figsize=(5, 5))
    low, high = min(*predicted, *measured) * 0.9, max(*predicted, *measured) * 1.1
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="predicted = measured")
    ax.fill_between([low, high], [low * 0.9, high * 0.9], [low * 1.1, high * 1.1], color="tab:green", alpha=0.15,
                    label="+-10%")
    ax.scatter(measured, predicted, s=14, color="tab:blue")
    ax.set(xlim=(low, high), ylim=(low, high), xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
           title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_metric_curve(history: Sequence[dict[str, Any]], column: str, label: str, path: Path,
                      target: float | None = None) -> list[Path]:
    """A per-epoch value of the metrics (e.g. the expected latency), with an optional target line."""
    rows = [r for r in history if r.get(column) not in (None, "")]
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["epoch"] for r in rows], [float(r[column]) for r in rows], marker="o", markersize=3)
    if target:
        ax.axhline(target, color="tab:red", linestyle="--", label=f"budget {target:g}")
        ax.legend()
    ax.set(xlabel="epoch", ylabel=label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path) -> list[Path]:
    """Loss and accuracy per epoch, training beside evaluation (valid or test)."""
    if not history:
        return []
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in zip(axes, ("loss", "acc")):
        for column in (c for c in history[0] if c.endswith(f"_{metric}")):
            ax.plot(epochs, [float(r[column]) for r in history], marker="o", markersize=3,
                    label=column.replace("_", " "))
        ax.set(xlabel="epoch", ylabel="accuracy" if metric == "acc" else "cross-entropy")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], path: Path, title: str) -> list[Path]:
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(0.45 * n + 2.5, 0.45 * n + 2))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if count > max(max(r) for r in matrix) / 2 else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted class", ylabel="true class", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def draw_routed_arch(arch, space, path: Path) -> Path:
    """The derived network block by block: one box per block (head op and kept stack ops), with its
    width, resolution and stride, from the stem to the final 1x1 block."""
    size = space.input_size // space.stem_stride
    boxes = [("stem", [f"conv3x3 s{space.stem_stride}", space.stem_op], space.widths[0], size)]
    for prev, block in zip(arch.path, arch.blocks):
        stride = space.stride(prev, block.block)
        size //= stride
        boxes.append((f"block {block.block}", [f"{block.head} s{stride}", *block.stack], space.width(block.block), size))
    boxes.append(("final", ["conv1x1", "pool + linear"], space.final_width, size))
    fig, ax = plt.subplots(figsize=(1.6 * len(boxes) + 0.5, 3.6))
    tallest = max(len(ops) for _, ops, _, _ in boxes)
    for i, (name, ops, width, side) in enumerate(boxes):
        height = 0.5 + 0.35 * len(ops)
        ax.add_patch(plt.Rectangle((i * 1.6, 0), 1.3, height, facecolor="tab:blue" if name.startswith("block")
                                   else "lightgray", alpha=0.25, edgecolor="black"))
        ax.text(i * 1.6 + 0.65, height + 0.1, f"{name}\n{width} ch, {side}x{side}", ha="center", va="bottom", fontsize=8)
        for j, op in enumerate(ops):
            ax.text(i * 1.6 + 0.65, height - 0.35 * (j + 1), op.replace("mbconv_", ""), ha="center", va="center",
                    fontsize=7)
        if i:
            ax.annotate("", xy=(i * 1.6, 0.25), xytext=(i * 1.6 - 0.3, 0.25), arrowprops={"arrowstyle": "->"})
    ax.set(xlim=(-0.2, 1.6 * len(boxes)), ylim=(-0.2, 1.2 + 0.35 * tallest))
    ax.axis("off")
    ax.set_title(f"{space.name}: {len(arch.blocks)} routing blocks on the path", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency_vs_budget(breakdown: dict[str, float], predicted: float, measured: float, budget: float,
                           path: Path) -> Path:
    """Predicted latency stacked by part of the network, the measured latency, and the budget."""
    fig, ax = plt.subplots(figsize=(7, 2.6))
    left = 0.0
    colors = plt.cm.tab20.colors
    for i, (part, ms) in enumerate(breakdown.items()):
        ax.barh("predicted (table)", ms, left=left, color=colors[i % len(colors)], label=part)
        left += ms
    if predicted > left:  # the per-call overhead counted once for the network
        ax.barh("predicted (table)", predicted - left, left=left, color="lightgray", label="call overhead")
    ax.barh("measured (ORT)", measured, color="dimgray")
    ax.axvline(budget, color="tab:red", linestyle="--", label=f"budget {budget:g} ms")
    ax.axvline(1.05 * budget, color="tab:red", linestyle=":", linewidth=1, label="budget +5%")
    ax.set(xlabel="latency (ms)")
    ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
