"""The charts as a reader meets them: the largest models keep their own colour, the rest are
summed into "other", and the numbers in the table beside a chart add up to its total."""

from __future__ import annotations

import re
from datetime import date, timedelta

from tollgate_ledger.console.charts import stacked_bars, top_series
from tollgate_ledger.console.formatting import compact_tokens


def test_many_models_become_seven_series_and_other_with_the_same_total() -> None:
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(30)]
    by_model = {f"model-{i:02d}": [i + 1] * 30 for i in range(10)}
    series = top_series(by_model)
    assert [s.label for s in series][:7] == [f"model-{i:02d}" for i in range(9, 2, -1)]
    assert series[-1].label == "other (3 models)" and series[-1].values[0] == 1 + 2 + 3
    assert sum(s.total for s in series) == sum(sum(v) for v in by_model.values())

    html = str(stacked_bars("c", "Tokens per day", days, series, compact_tokens, unit_label="tokens"))
    assert html.count("<rect class=") == 30 * 8
    assert 'class="s7"' in html  # "other" has its own neutral colour
    assert "<desc id=\"c-d\">1.6k in total over 30 days" in html  # 1,650 tokens
    totals = re.findall(r'<td class="num">([\d.k]+)</td></tr>', html)
    assert len(totals) == 30 and set(totals) == {"55"}


def test_an_empty_month_says_so_instead_of_drawing_nothing() -> None:
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(30)]
    html = str(stacked_bars("e", "Spend per day", days, [], compact_tokens, unit_label="spend"))
    assert "No spend in the last 30 days" in html and "<rect" not in html
    assert "<details" not in html  # no empty table either
