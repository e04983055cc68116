"""How benchmarks/counter_clip.py scores the page's answers on the real-pill clip: named
right or "likely" with the right pill first counts; a wrong name anywhere counts against; absent
pills reaching "likely" or named are counted. Hand-made answers, so each rule is seen to bite."""

from __future__ import annotations

from benchmarks.counter_clip import score


def answer(tier, label=None, first=None, state="unknown", announced="unknown"):
    candidates = [{"label": first, "rank": 1, "thumbnail": None}] if first else []
    return {"tier": tier, "label": label, "candidates": candidates, "state": state, "announced": announced,
            "step_ms": 1.0}


def test_the_clip_scoring_rules():
    truth = [None, "a", "a", "a", "a", "x", "x", None]
    answers = [
        answer("none"),                                     # the empty tray
        answer("unsure", "unknown", "b"),                   # a: first second, wrong pill ranked first
        answer("likely", "unknown", "a"),                   # a: likely, right first -> right
        answer("named", "a", "a", state="pill", announced="a"),  # a: named right (after its first second)
        answer("named", "b", "b", state="pill", announced="b"),  # a: named wrong -> a wrong name
        answer("likely", "unknown", "a"),                   # x (absent) reaches likely
        answer("named", "a", "a", state="pill", announced="a"),  # x named -> a wrong name, absent named
        answer("named", "a", "a", state="pill", announced="a"),  # the tray named -> a wrong name
    ]
    figures = score(answers, truth, enrolled=["a"], absent=["x"], fps=2)
    assert figures["enrolled_frames"] == 4 and figures["right"] == 0.5
    assert figures["right_after_1s"] == 0.5  # frames 3 and 4: one right, one wrong
    assert figures["seconds_to_first_right"] == {"a": 0.5}
    assert figures["wrong_names"] == 3
    assert (figures["absent_frames"], figures["absent_likely"], figures["absent_named"]) == (2, 0.5, 1)
    assert figures["ranked_first"] == 0.5
    before = score(answers, truth, enrolled=["a"], absent=["x"], fps=2, announced=True)
    assert before["right"] == 0.25 and before["absent_likely"] == 0.0 and before["wrong_names"] == 3
