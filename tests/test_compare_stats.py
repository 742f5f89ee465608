"""compare's statistics: paired t p-values, Holm–Bonferroni verdicts, the summary and the plots."""

import math
import random

import pytest

from augmentbn.train.compare import _plot_title, cell_statistics, summarize
from augmentbn.train.stats import holm_bonferroni, paired_difference

pytest.importorskip("scipy", reason="the statistics need the train extra")


def test_holm_by_hand():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1, max with 0.06)
    result = holm_bonferroni([0.01, 0.04, 0.03, 0.005, None], alpha=0.05)
    adjusted = [a for a, _ in result]
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjusted[4] is None
    assert [r for _, r in result] == [True, False, False, True, False]


def test_holm_step_down_rejects_in_order_and_caps_at_one():
    # 0.001 x4 = 0.004, 0.011 x3 = 0.033, 0.02 x2 = 0.04: three rejections; 0.2 x1 = 0.2
    result = holm_bonferroni([0.001, 0.2, 0.011, 0.02])
    assert [a for a, _ in result] == pytest.approx([0.004, 0.2, 0.033, 0.04])
    assert [r for _, r in result] == [True, False, True, True]
    assert holm_bonferroni([0.5, 0.6]) == [(1.0, False), (1.0, False)]
    assert holm_bonferroni([0.03]) == [(0.03, True)]  # one test: no correction
    assert holm_bonferroni([]) == []


def _t2_pvalue(diffs):
    """Two-sided paired t p-value with 2 degrees of freedom, from the closed-form CDF
    F(t) = 1/2 + t / (2 sqrt(2 + t²)): p = 1 - |t| / sqrt(2 + t²)."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_paired_p_value_by_hand_and_agrees_with_the_interval():
    diff = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert diff["p"] == pytest.approx(_t2_pvalue([1, 2, 3]), rel=1e-9)  # 0.0741799
    assert diff["p"] == pytest.approx(0.0741799, abs=1e-7)
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 8)
        values = [rng.gauss(0.05, 0.1) for _ in range(n)]
        baseline = [rng.gauss(0, 0.1) for _ in range(n)]
        d = paired_difference(values, baseline)
        assert (d["p"] < 0.05) == d["significant"]  # interval excludes 0 <=> p < alpha
    assert paired_difference([0.5, 0.6], [0.4, 0.5])["p"] == 0.0  # equal differences
    assert paired_difference([0.5, 0.6], [0.5, 0.6])["p"] == 1.0
    assert paired_difference([0.5], [0.4])["p"] is None


# Accuracies for 3 seeds; BN at 0.90 ± spread; the differences make the p-values below.
DIFFS = {
    ("nabn", 2): [0.010, 0.012, 0.011],  # tight and positive: tiny p
    ("iebn", 2): [-0.02, 0.03, 0.01],
    ("nabn", 8): [0.03, 0.05, 0.04],  # p ≈ 0.020 alone, Holm p ≈ 0.079
    ("iebn", 8): [-0.05, -0.048, -0.052],  # tight and negative
    ("nabn", 32): [0.0, 0.01, -0.01],
    ("iebn", 32): [0.01, -0.03, 0.0],
}


def _rows():
    rows = []
    for size in (2, 8, 32):
        base = [0.90, 0.91, 0.92]
        for seed, acc in enumerate(base):
            rows.append(dict(norm="bn", batch_size=size, seed=seed, test_acc=acc))
        for norm in ("nabn", "iebn"):
            for seed, d in enumerate(DIFFS[(norm, size)]):
                rows.append(dict(norm=norm, batch_size=size, seed=seed, test_acc=base[seed] + d))
    for row in rows:
        row.update(test_macro_auc=0.99, epochs=4, dataset="digits")
    return rows


def test_verdicts_equal_a_hand_holm_correction():
    cells = {(c["norm"], c["batch_size"]): c for c in cell_statistics(_rows())}
    p = {key: _t2_pvalue(d) for key, d in DIFFS.items()}
    order = sorted(p, key=p.get)
    m, running, expected = len(order), 0.0, {}
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[key]))
        expected[key] = running
    for key in DIFFS:
        cell = cells[key]
        assert cell["diff"]["p"] == pytest.approx(p[key], rel=1e-6, abs=1e-12)
        assert cell["p_holm"] == pytest.approx(expected[key], rel=1e-6, abs=1e-12)
        if expected[key] <= 0.05:
            word = "better" if sum(DIFFS[key]) > 0 else "worse"
            assert cell["verdict"] == f"{word} than BN"
        elif p[key] < 0.05:
            assert cell["verdict"] == "not significant after correction"
        else:
            assert cell["verdict"] == "not significant"
    assert cells[("nabn", 2)]["verdict"] == "better than BN"
    assert cells[("iebn", 8)]["verdict"] == "worse than BN"
    assert cells[("nabn", 8)]["verdict"] == "not significant after correction"
    assert cells[("bn", 8)]["verdict"] == "baseline"


def test_summary_counts_the_comparisons_and_keeps_the_uncorrected_intervals():
    text = summarize(_rows())
    assert "This grid makes 6 comparisons with BN" in text
    assert "Holm–Bonferroni" in text
    assert "| Δ acc vs BN (95% CI) | p | Holm p | verdict |" in text
    nabn8 = next(line for line in text.splitlines() if line.startswith("| nabn | 8 |"))
    cells = [c.strip() for c in nabn8.strip("|").split("|")]
    low, high = (float(v) for v in cells[5].split("[")[1].rstrip("]").split(","))
    assert low > 0 and high > 0  # the uncorrected interval excludes 0 ...
    assert cells[-1] == "not significant after correction"  # ... but the verdict is corrected
    assert "Significant after Holm–Bonferroni correction over 6 comparisons" in text
    assert "nabn at batch 2: better than BN; iebn at batch 8: worse than BN" in text
    assert "Uncorrected, the 95% interval excludes 0 for nabn at batch 8" in text


def test_plot_title_names_data_n_and_epochs(tmp_path):
    from augmentbn.train.compare import plot_comparison

    rows = _rows()
    assert _plot_title(rows, cell_statistics(rows)) == "digits; n = 3 seeds per point; 4 epochs"
    rows = rows[1:]  # bn at batch 2 has two seeds now
    assert "n = 2–3 seeds" in _plot_title(rows, cell_statistics(rows))
    plot_comparison(rows, tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_have_integer_epochs_and_name_the_norm():
    from augmentbn.train import TrainConfig
    from augmentbn.train.report import curves_figure, run_title

    history = [
        dict(epoch=e, train_loss=1 / e, val_loss=1 / e, train_acc=e / 4, val_acc=e / 5)
        for e in (1, 2, 3)
    ]
    title = run_title(TrainConfig(norm="nabn", depth=20, train_batch=8, seed=2))
    assert title == "nabn: resnet20 on digits, batch 8, seed 2"
    fig = curves_figure(history, title)
    fig.canvas.draw()
    assert fig.texts[0].get_text() == title  # the suptitle
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0, 2.0, 3.0]


def test_summary_with_one_or_no_testable_comparison():
    rows = [r for r in _rows() if r["batch_size"] == 2 and r["norm"] != "iebn"]
    text = summarize(rows)
    assert "This grid makes 1 comparison with BN" in text and "(Holm p = p)" in text
    assert "correction over 1 comparison:" in text
    single = [r for r in rows if r["seed"] == 0]
    text = summarize(single)
    assert "No difference to BN can be tested" in text and "no test (n < 2)" in text
    assert "correction over" not in text
