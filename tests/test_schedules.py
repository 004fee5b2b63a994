import math

import pytest

from hf_vision_distill.distillation.schedules import Schedule


def test_constant():
    assert Schedule.parse("3.0").value(7, 10) == 3.0
    assert Schedule.parse(0.5).value(0, 10) == 0.5


def test_linear_and_cosine_ramps():
    linear = Schedule.parse("linear:4.0->1.0")
    assert [linear.value(epoch, 10) for epoch in (0, 5, 10, 12)] == pytest.approx([4.0, 2.5, 1.0, 1.0])
    cosine = Schedule.parse("cosine:1->0")
    assert cosine.value(0, 4) == pytest.approx(1.0)
    assert cosine.value(1, 4) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert cosine.value(2, 4) == pytest.approx(0.5)
    assert cosine.value(4, 4) == pytest.approx(0.0)


def test_piecewise_from_the_issue():
    # T from 3.0 to 2.0 over epochs 1-20, then 1.5 to 1.0 over 21-50.
    schedule = Schedule.parse("1-20: 3.0->2.0, 21-50: 1.5->1.0")
    assert schedule.value(0, 50) == 3.0  # before the first range
    assert schedule.value(1, 50) == 3.0
    assert schedule.value(10.5, 50) == pytest.approx(2.5)
    assert schedule.value(20, 50) == 2.0
    assert schedule.value(20.5, 50) == 2.0  # between ranges: hold
    assert schedule.value(21, 50) == 1.5
    assert schedule.value(35.5, 50) == pytest.approx(1.25)
    assert schedule.value(60, 50) == 1.0  # after the last range


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fast", "cannot read the schedule"),
        ("linear:1->", "cannot read the schedule"),
        ("5-3:1->0", "must end after it starts"),
        ("0-10:1->0,5-20:0->1", "overlap"),
    ],
)
def test_bad_schedules(spec, message):
    with pytest.raises(ValueError, match=message):
        Schedule.parse(spec)
