"""The paper's claims and the verdict rule: each claim's paper number against a hand computation from the
paper's printed values, the verdict against hand-made intervals, and the results table of a run."""

import math

import pytest

from simplemix import claims


def test_the_verdict_reads_the_interval_against_the_predicted_sign():
    assert claims.verdict(+1, 0.5, 3.0) == claims.AGREES
    assert claims.verdict(-1, -3.0, -0.1) == claims.AGREES
    assert claims.verdict(+1, -3.0, -0.1) == claims.DISAGREES
    assert claims.verdict(-1, 0.2, 1.0) == claims.DISAGREES
    assert claims.verdict(+1, -0.1, 4.0) == claims.INCONCLUSIVE
    assert claims.verdict(-1, 0.0, 2.0) == claims.INCONCLUSIVE  # touching zero is not excluding it
    assert claims.verdict(+1, math.nan, math.nan) == claims.NOT_RUN
    with pytest.raises(ValueError, match="direction"):
        claims.verdict(0, 1, 2)
    with pytest.raises(ValueError, match="lo > hi"):
        claims.verdict(1, 2, 1)


def test_the_papers_numbers_are_computed_from_its_printed_values():
    paper = {c.id: c.paper_value() for c in claims.CLAIMS if c.paper_value}
    assert paper["on_helps_verifiable"] == pytest.approx((5.72 + 7.02) / 2)  # section 3.2
    assert paper["off_helps_open_ended"] == pytest.approx((-2.85 - 3.29) / 2)
    assert paper["simplemix_vs_single_source"] == pytest.approx(6.03)  # abstract
    assert paper["simplemix_vs_hybrid"] == pytest.approx(3.05)
    assert paper["diversity_lowers_reward"] == pytest.approx(-10.77 + 9.44)  # Table 3
    assert paper["simplemix_beats_diverse"] == pytest.approx(29.41 - 26.18)
    # every printed number has the sign its claim predicts
    assert all(math.copysign(1, v) == claims.BY_ID[k].direction for k, v in paper.items())
    assert {c.chapter for c in claims.CLAIMS} == {"02_on_vs_off_policy", "03_simplemix_and_baselines",
                                                   "04_diversity", "05_mixture_ratio", "06_filtering"}


def test_a_runs_table_has_one_row_per_claim_with_its_computed_verdict():
    results = {"02_on_vs_off_policy": {"claims": {
        "on_helps_verifiable": claims.measured(4.0, 1.0, 7.0),
        "off_helps_open_ended": claims.measured(1.0, 0.2, 1.8)}},
        "05_mixture_ratio": {"claims": {"even_mixture_best": claims.measured(0.5, -1.0, 2.0)}}}
    table = claims.table(results).set_index("claim")
    assert len(table) == len(claims.CLAIMS)
    verdicts = dict(zip([c.id for c in claims.CLAIMS], table["verdict"]))
    assert verdicts["on_helps_verifiable"] == claims.AGREES
    assert verdicts["off_helps_open_ended"] == claims.DISAGREES
    assert verdicts["even_mixture_best"] == claims.INCONCLUSIVE
    assert verdicts["simplemix_vs_hybrid"] == claims.NOT_RUN
    line = claims.line("on_helps_verifiable", results["02_on_vs_off_policy"]["claims"]["on_helps_verifiable"])
    assert line.startswith("**Verdict: agrees in sign.**") and "+6.37 LC points" in line and "+4.00 [+1.00, +7.00]" in line
    with pytest.raises(ValueError, match="outside its interval"):
        claims.measured(3.0, 0.0, 1.0)
