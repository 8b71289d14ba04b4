"""Figures of the pocket world's measurements: DPG scores per prompt set, attention pointing per step window."""

from __future__ import annotations

from matplotlib.figure import Figure

from ella_demo.inspect.figures import draw_category_bars, new_figure

SET_TITLES = {
    "seen": "seen combinations",
    "unseen_combinations": "unseen colour-shape combinations",
    "paraphrase": "paraphrases (words never in training captions)",
}


def evaluation_figure(summary: dict, side_labels: dict[str, str]) -> Figure:
    """One panel per prompt set: overall and per broad category DPG scores (%) of each side.

    `summary`: what evaluation.evaluate writes: sets -> {side -> {"overall", "broad", ...}, "prompts", ...}.
    """
    sets = summary["sets"]
    figure = new_figure(5.2 * len(sets), 4.4)
    for index, (name, result) in enumerate(sets.items(), start=1):
        scores = {label: {"overall": result[side]["overall"], **result[side]["broad"]}
                  for side, label in side_labels.items()}  # fmt: skip
        counts = f"{result['prompts']} prompts, {result['questions']} questions, 4 images each"
        title = f"{SET_TITLES.get(name, name)}\n{counts}"
        draw_category_bars(figure.add_subplot(1, len(sets), index), scores, title, 4.0)
    figure.suptitle("Pocket world, DPG-style scores from the pixel detector (higher is better)", fontsize=11)
    return figure


def pointing_figure(pointing: dict, side_labels: dict[str, str]) -> Figure:
    """Bars per step window: how often each side's word-map peak lands on the named object, with chance ticks.

    `pointing`: attention_check.measure_pointing's result (windows -> side -> window -> accuracy, chance, trials).
    """
    windows = list(next(iter(pointing["windows"].values())))
    figure = new_figure(7.0, 4.2)
    axes = figure.add_subplot()
    width = 0.8 / len(side_labels)
    for index, (side, label) in enumerate(side_labels.items()):
        rows = [pointing["windows"][side][window] for window in windows]
        positions = [position + (index - (len(side_labels) - 1) / 2) * width for position in range(len(windows))]
        bars = axes.bar(positions, [100 * (row["accuracy"] or 0.0) for row in rows], width, label=label)
        axes.bar_label(bars, labels=[f"{100 * row['accuracy']:.0f}%\nn={row['trials']}" if row["accuracy"] is not None
                                     else "n=0" for row in rows], fontsize=7)  # fmt: skip
        axes.scatter(positions, [100 * (row["chance"] or 0.0) for row in rows], marker="_", s=300, color="black",
                     zorder=3, label="chance (random peak)" if index == 0 else None)  # fmt: skip
    axes.set_xticks(range(len(windows)), [f"{window} steps" for window in windows])
    axes.set_ylabel("peak on the object (%)")
    axes.set_ylim(0, 125)  # room above 100 for the labels and the legend
    axes.set_yticks(range(0, 101, 20))
    axes.legend(fontsize=8, loc="upper center", ncol=3)
    axes.grid(axis="y", alpha=0.3)
    axes.set_title(f"Does the word map of an object's noun peak on it? {pointing['prompts']} one- and two-object "
                   "prompts", fontsize=10)  # fmt: skip
    return figure
