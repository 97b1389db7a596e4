"""Plots (PNG) and ``report.md`` from the comparison's results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_plots", "write_report"]  # and plot_NAME / section_NAME per experiment

LABELS = {"transformer": "Transformer (self-attention)", "rnn": "RNN (GRU)", "cnn": "CNN (ConvS2S block)"}
RUN_LABELS = {
    "transformer": "Transformer",
    "seq2seq": "Transformer",  # results.json written before the family was renamed
    "rnn": "GRU + additive attention",
    "cnn": "ConvS2S",
}


def _figure(title: str, xlabel: str, ylabel: str, *, logx: bool = False, logy: bool = False) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def plot_parallelism(r: dict[str, Any], out: Path) -> dict[str, str]:
    """The plot(s) of experiment parallelism; returns name -> file name."""
    files: dict[str, str] = {}
    fig, ax = _figure(
        f"a. One layer, forward + backward (d_model {r['d_model']}, batch {r['batch']})",
        "sequence length n (tokens)",
        "time (ms)",
        logx=True,
        logy=True,
    )
    for f, ms in r["ms"].items():
        ax.plot(r["lengths"], ms, marker="o", label=LABELS[f])
    ax.legend()
    files["parallelism"] = _save(fig, out / "a_parallelism.png")
    return files


def plot_path_length(r: dict[str, Any], out: Path) -> dict[str, str]:
    """The plot(s) of experiment path_length; returns name -> file name."""
    files: dict[str, str] = {}
    rows = r["rows"]
    fig, ax = _figure(
        "b. Layers until the last output depends on the first input",
        "sequence length n (tokens)",
        "layers (measured)",
        logx=True,
        logy=True,
    )
    series: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        name = LABELS[row["family"]] + (f", kernel {row['kernel']}" if row["kernel"] else "")
        if row["layers"] is not None:
            series.setdefault(name, []).append((row["n"], row["layers"]))
        if row["family"] == "rnn":
            series.setdefault("RNN (GRU): time steps along that path", []).append(
                (row["n"], row["sequential_steps_on_path"])
            )
    styles = {LABELS["transformer"]: {"linestyle": "--", "marker": "s", "markersize": 9}}
    for name, pts in series.items():
        style = styles.get(name, {"linestyle": ":" if "time steps" in name else "-", "marker": "o"})
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, **style)
    ax.set_ylabel("layers (measured); GRU time steps")
    ax.legend(fontsize=8)
    files["path_length"] = _save(fig, out / "b_path_length.png")
    return files


def plot_long_range(r: dict[str, Any], out: Path) -> dict[str, str]:
    """The plot(s) of experiment long_range; returns name -> file name."""
    files: dict[str, str] = {}
    fig, ax = _figure(
        f"c. Recall the token D positions back ({r['steps']} training steps)",
        "distance D (tokens)",
        "test accuracy",
        logx=True,
    )
    for f, acc in r["accuracy"].items():
        ax.plot(r["distances"], acc, marker="o", label=f"{LABELS[f]}, {r['parameters'][f]:,} params")
    ax.axhline(r["chance"], color="grey", linestyle="--", label="chance")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    files["long_range"] = _save(fig, out / "c_long_range.png")
    return files


def plot_scaling(r: dict[str, Any], out: Path) -> dict[str, str]:
    """The plot(s) of experiment scaling; returns name -> file name."""
    files: dict[str, str] = {}
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), dpi=110)
    panels = [
        ("entropy", "row entropy (nats)"),
        ("saturated", "share of rows with max weight > 0.99"),
        ("grad_norm", "gradient norm at the scores"),
    ]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for variant, name in (("scaled", "scaled: QKᵀ/√d_k"), ("dot", "unscaled: QKᵀ")):
            ax.plot(r["d_ks"], r["at_init"][variant][key], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("d_k (dimensions)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if key == "grad_norm":
            ax.set_yscale("log")
    axes[0].axhline(r["max_entropy"], color="grey", linestyle="--", label="uniform")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"d. Softmax at initialization, q, k ~ N(0, 1), {r['keys']} keys")
    files["scaling"] = _save(fig, out / "d_scaling_init.png")
    fig, ax = _figure(
        f"d. Training, {r['curve_task']} task, d_k = {r['curve_d_k']}",
        "training step",
        "validation loss (nats/token)",
    )
    names = {"scaled": "scaled: QKᵀ/√d_k", "dot": "unscaled: QKᵀ"}
    for variant, run in r["curves"].items():
        ax.plot(run["curve"]["step"], run["curve"]["valid_loss"], marker="o", label=names[variant])
    ax.legend()
    files["scaling_curves"] = _save(fig, out / "d_scaling_training.png")
    return files


def plot_query_batch(r: dict[str, Any], out: Path) -> dict[str, str]:
    """The plot(s) of experiment query_batch; returns name -> file name."""
    files: dict[str, str] = {}
    fig, ax = _figure(
        "e. One query at a time vs all queries at once",
        "sequence length n (tokens)",
        "time (ms)",
        logx=True,
        logy=True,
    )
    names = {"per_query": "one query at a time", "query_batch": "query batch (one matmul)", "fused": "fused kernel"}
    for key, ms in r["ms"].items():
        ax.plot(r["lengths"], ms, marker="o", label=names[key])
    ax.legend()
    files["query_batch"] = _save(fig, out / "e_query_batch.png")
    return files


def plot_heads(r: dict[str, Any], out: Path) -> dict[str, str]:
    """The plot(s) of experiment heads; returns name -> file name."""
    files: dict[str, str] = {}
    fig, ax = _figure(f"f. Heads at d_model {r['d_model']}: {r['task']}", "heads h", "test token accuracy")
    hs = [int(h) for h in r["mean_accuracy"]]
    ax.bar([str(h) for h in hs], [r["mean_accuracy"][str(h)] for h in hs])
    ax.axhline(r["chance"], color="grey", linestyle="--", label="chance")
    ax.set_ylim(0, 1.05)
    ax.legend()
    files["heads"] = _save(fig, out / "f_heads.png")
    return files


def _translation_scores(r: dict[str, Any]) -> tuple[str, str, dict[str, float]]:
    """(held-out split, score name, family -> score): BLEU on parallel text, else exact match in %."""
    first = next(iter(r["runs"].values()))["summary"]
    split = first.get("eval_split", "test")
    if f"{split}_bleu" in first:
        return split, "BLEU", {f: run["summary"][f"{split}_bleu"] for f, run in r["runs"].items()}
    return split, "exact match (%)", {f: 100 * run["summary"]["exact_match"] for f, run in r["runs"].items()}


def _budget_words(r: dict[str, Any]) -> str:
    """'400 steps each' or '30 training minutes each'."""
    return f"{r['minutes']:g} training minutes each" if r.get("minutes") else f"{r['steps']} steps each"


def plot_translation(r: dict[str, Any], out: Path) -> dict[str, str]:
    """The plot(s) of experiment translation: the held-out score per family, and (at equal time) the
    validation score against training minutes; returns name -> file name."""
    files: dict[str, str] = {}
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    split, score, scores = _translation_scores(r)
    names = [RUN_LABELS[f] for f in r["runs"]]
    colors = ["C0", "C1", "C2"]
    axes[0].bar(names, list(scores.values()), color=colors)
    axes[0].set_ylabel(f"{split} {score} (greedy)")
    axes[0].tick_params(axis="x", labelsize=8)
    if r.get("minutes"):
        key = "valid_bleu" if score == "BLEU" else "valid_exact_match"
        scale = 1.0 if score == "BLEU" else 100.0
        for (family, run), color in zip(r["runs"].items(), colors, strict=False):
            c = run["curve"]
            points = [(t / 60, scale * v) for t, v in zip(c["elapsed_s"], c[key], strict=True) if v is not None]
            axes[1].plot(*zip(*points, strict=True), marker="o", color=color, label=RUN_LABELS[family])
        axes[1].set_xlabel("training minutes")
        axes[1].set_ylabel(f"valid {score} (greedy)")
        axes[1].legend(fontsize=8)
    else:
        axes[1].bar(names, [run["summary"]["train_minutes"] for run in r["runs"].values()], color=colors)
        axes[1].set_ylabel("training time (minutes)")
        axes[1].tick_params(axis="x", labelsize=8)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"g. {r['task']}: {_budget_words(r)}, same batches")
    files["translation"] = _save(fig, out / "g_translation.png")
    return files


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def section_parallelism(r: dict[str, Any], files: dict[str, str]) -> list[str]:
    """The report section of experiment parallelism (markdown lines)."""
    rows = [
        [n] + [_f(r["ms"][f][i]) for f in LABELS] + [r["sequential_steps"]["rnn"][i]]
        for i, n in enumerate(r["lengths"])
    ]
    last = len(r["lengths"]) - 1
    ratio = r["ms"]["rnn"][last] / r["ms"]["transformer"][last]
    return [
        "",
        "## a. Parallelism",
        "",
        f"Forward + backward time (ms) of one layer, d_model {r['d_model']}, batch {r['batch']}. Attention and "
        "convolution have 1 sequential step per layer; the GRU has n.",
        "",
        _table(["n", *LABELS.values(), "GRU sequential steps"], rows),
        "",
        f"At n = {r['lengths'][last]} the GRU layer takes {ratio:.2f}x the Transformer layer's time.",
        "",
        f"![parallelism]({files['parallelism']})",
    ]


def section_path_length(r: dict[str, Any], files: dict[str, str]) -> list[str]:
    """The report section of experiment path_length (markdown lines)."""
    rows = [
        [
            LABELS[x["family"]],
            x["kernel"] or "",
            x["n"],
            x["layers"] if x["layers"] is not None else "not reached",
            x["expected"],
            x["sequential_steps_on_path"],
            f"{x['gradient_norm']:.2e}",
        ]
        for x in r["rows"]
    ]
    return [
        "",
        "## b. Path length, measured",
        "",
        "Layers stacked one at a time (fresh random weights, float64); a directional derivative (J·t) from input "
        "position 0 tells when the last output first depends on it. Expected: 1 for attention and the GRU, "
        "ceil((n-1) / ((k-1)/2)) for centred kernel-k convolutions.",
        "",
        _table(
            [
                "family",
                "kernel",
                "n",
                "layers (measured)",
                "layers (expected)",
                "sequential steps on the path",
                "|d out / d in|",
            ],
            rows,
        ),
        "",
        f"![path length]({files['path_length']})",
    ]


def section_long_range(r: dict[str, Any], files: dict[str, str]) -> list[str]:
    """The report section of experiment long_range (markdown lines)."""
    rows = [[D] + [_f(r["accuracy"][f][i], 3) for f in LABELS] for i, D in enumerate(r["distances"])]
    return [
        "",
        "## c. Long-range dependency",
        "",
        f"Sequences of {r['sequence_length']} random tokens (vocabulary {r['vocab']}, chance {r['chance']:.3f}); "
        "the answer is the token D positions before the last one, read out at the last position. "
        f"{r['steps']} steps of Adam for each model; "
        "parameters: "
        + ", ".join(f"{LABELS[f]} {r['parameters'][f]:,} ({r['layers'][f]} layers)" for f in LABELS)
        + ".",
        "",
        _table(["D", *LABELS.values()], rows),
        "",
        f"![long range]({files['long_range']})",
    ]


def section_scaling(r: dict[str, Any], files: dict[str, str]) -> list[str]:
    """The report section of experiment scaling (markdown lines)."""
    a = r["at_init"]
    rows = [
        [
            dk,
            _f(a["scaled"]["entropy"][i]),
            _f(a["dot"]["entropy"][i]),
            _f(a["scaled"]["saturated"][i], 3),
            _f(a["dot"]["saturated"][i], 3),
            f"{a['scaled']['grad_norm'][i]:.2e}",
            f"{a['dot']['grad_norm'][i]:.2e}",
        ]
        for i, dk in enumerate(r["d_ks"])
    ]
    curves = r["curves"]
    final = {v: curves[v]["curve"]["valid_loss"][-1] for v in curves}
    return [
        "",
        "## d. Why divide by √d_k",
        "",
        f"q, k ~ N(0, 1) per dimension, {r['keys']} keys per query "
        f"(uniform attention has entropy {r['max_entropy']:.2f} nats).",
        "",
        _table(
            [
                "d_k",
                "entropy scaled",
                "entropy unscaled",
                "saturated scaled",
                "saturated unscaled",
                "grad scaled",
                "grad unscaled",
            ],
            rows,
        ),
        "",
        f"![scaling at init]({files['scaling']})",
        "",
        f"Training ({r['curve_task']} task, d_k = {r['curve_d_k']}): "
        f"final validation loss scaled {final['scaled']:.4f}, "
        f"unscaled {final['dot']:.4f}.",
        "",
        f"![scaling training]({files['scaling_curves']})",
    ]


def section_query_batch(r: dict[str, Any], files: dict[str, str]) -> list[str]:
    """The report section of experiment query_batch (markdown lines)."""
    rows = [
        [
            n,
            _f(r["ms"]["per_query"][i]),
            _f(r["ms"]["query_batch"][i]),
            _f(r["ms"]["fused"][i]),
            _f(r["ratio"][i], 1),
        ]
        for i, n in enumerate(r["lengths"])
    ]
    return [
        "",
        "## e. Query batch",
        "",
        f"{r['heads']} heads, d_k {r['d_k']}, batch 1. The loop and the matrix form agree to {r['max_abs_diff']:.1e}.",
        "",
        _table(["n", "one query at a time (ms)", "query batch (ms)", "fused (ms)", "loop / batch"], rows),
        "",
        f"![query batch]({files['query_batch']})",
    ]


def section_heads(r: dict[str, Any], files: dict[str, str]) -> list[str]:
    """The report section of experiment heads (markdown lines)."""
    rows = [[h, _f(r["mean_accuracy"][h], 3), ", ".join(_f(x, 3) for x in acc)] for h, acc in r["accuracy"].items()]
    return [
        "",
        "## f. Multi-head vs one head",
        "",
        f"One layer, d_model {r['d_model']}, task {r['task']} on {r['sequence_length']} digits, "
        f"{r['steps']} steps, "
        f"{r['seeds']} seed(s); chance {r['chance']}.",
        "",
        _table(["heads", "mean token accuracy", "per seed"], rows),
        "",
        f"![heads]({files['heads']})",
    ]


def section_translation(r: dict[str, Any], files: dict[str, str]) -> list[str]:
    """The report section of experiment translation (markdown lines)."""
    split, score, _ = _translation_scores(r)
    beam = r.get("beam", 1)
    rows = []
    for family, run in r["runs"].items():
        s = run["summary"]
        beamed = run.get("beam", {})
        value = s.get(f"{split}_bleu")
        rows.append(
            [
                RUN_LABELS[family],
                f"{s['parameters']:,}",
                str(s["step"]),
                _f(s["train_minutes"]),
                _f(s.get(f"{split}_loss", float("nan")), 4),
                _f(value) if value is not None else "",
                _f(beamed["bleu"]) if "bleu" in beamed else "",
                _f(s.get("exact_match", float("nan")), 3),
            ]
        )
    heads = ["family", "parameters", "steps", "training minutes", f"{split} loss", "BLEU (greedy)"]
    heads += [f"BLEU (beam {beam})", "exact match (greedy)"]
    return [
        "",
        "## g. Translation",
        "",
        f"Task {r['task']}, {_budget_words(r)} with the same batches (`qkv train {r['task']} --family …`); "
        f"BLEU is cased sacreBLEU on the {split} split"
        + (f"; the curve is the validation {score} (greedy) at each evaluation." if r.get("minutes") else "."),
        "",
        _table(heads, rows),
        "",
        f"![translation]({files['translation']})",
    ]


def write_plots(results: dict[str, Any], out: Path, plots: dict[str, Callable[..., dict[str, str]]]) -> dict[str, str]:
    """Draw the PNGs of every experiment in ``results`` with its ``plots[name]`` into ``out``;
    returns plot name -> file name."""
    files: dict[str, str] = {}
    for name, plot in plots.items():
        if name in results:
            files.update(plot(results[name], out))
    return files


def write_report(
    results: dict[str, Any], files: dict[str, str], out: Path, sections: dict[str, Callable[..., list[str]]]
) -> Path:
    """Write ``report.md``: per experiment in ``results``, its ``sections[name]`` (table, plot, verdict)."""
    parts = [
        "# qkv compare: Transformer vs RNN vs CNN, scaled vs unscaled, query batch vs one query at a time",
        "",
        f"Sizes: `{results['sizes_name']}`; {results['environment']}; "
        f"device {results.get('device', 'cpu')}. Total {results['minutes']['total']:.1f} min.",
    ]
    for name, section in sections.items():
        if name in results:
            parts += section(results[name], files)
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
