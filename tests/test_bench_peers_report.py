"""The peers table's arithmetic (``bench.peers.report``): its cells, the per-round ratios
and the verdicts on the targets, from made-up figures. Nothing is timed here."""

from __future__ import annotations

from bench.peers.report import ratio, spread, table, target_lines
from bench.peers.scenarios import new_results


def test_a_cell_is_the_median_and_the_range_with_digits_to_tell_them_apart() -> None:
    assert spread([3.0]) == "3"
    assert spread([1200.4, 1000.0, 1400.0]) == "1,200 (1,000-1,400)"
    assert spread([1.234, 1.5, 2.0]) == "1.50 (1.23-2.00)"
    assert spread([42.25, 40.0]) == "41.1 (40.0-42.2)"


def test_a_ratio_is_of_the_medians_and_ranges_over_the_rounds_side_by_side() -> None:
    assert ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0]) == (2.0, 2.0, 3.0)


def test_each_target_compares_with_the_right_peer_and_says_whether_it_is_met() -> None:
    res = new_results()
    res["one"].update(ours=[5000.0], celery=[2000.0], dramatiq=[4500.0], redis=[20000.0])
    res["batch"].update(ours=[9000.0], redis=[20000.0])
    res["drain"].update({"ours": [700.0], "celery": [600.0], "celery-defaults": [650.0],
                         "taskiq": [900.0]})
    res["p50"].update(ours=[1.5], celery=[1.8], taskiq=[1.2], redis=[0.1])
    lines = target_lines(res)
    assert len(lines) == 7
    # The fastest peer leaves out ours and the Redis limit.
    assert "1.11 (1.11-1.11) vs dramatiq" in lines[0] and lines[0].endswith("NOT MET")
    assert "2.50 (2.50-2.50) vs celery," in lines[1] and lines[1].endswith("-- met")
    assert "0.45 (0.45-0.45) vs redis" in lines[2] and lines[2].endswith("NOT MET")
    assert "vs celery," in lines[3] and lines[3].endswith("NOT MET")  # 1.17 < 1.2
    assert "vs celery-defaults" in lines[4] and lines[4].endswith("-- met")
    assert "vs taskiq" in lines[5] and lines[5].endswith("NOT MET")
    assert "1.25 (1.25-1.25) vs taskiq" in lines[6] and lines[6].endswith("NOT MET")


def test_a_target_not_measured_says_so() -> None:
    assert all(line.endswith("not measured in this run") for line in target_lines(new_results()))


def test_the_table_has_a_column_per_peer_and_a_dash_where_a_peer_has_none() -> None:
    res = new_results()
    res["one"].update(ours=[5000.0], rq=[3000.0])
    res["batch"].update(ours=[20000.0])
    text = table(res, ["ours", "rq"], {"ours": "dispatch_many", "rq": None}, 100)
    header, one, batch, api = text.splitlines()
    assert header.split() == ["scenario", "ours", "rq"]
    assert one.split()[-2:] == ["5,000", "3,000"]
    assert batch.split()[-2:] == ["20,000", "\u2013"]
    assert api.split()[-2:] == ["dispatch_many", "\u2013"]
