"""Reset diagnosis: hot resets, resets at normal temperatures, mixed nights, too little data."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from daemon.gpu.diagnosis import MITIGATIONS, classify_reset, diagnose
from daemon.policy.governor import FIRMWARE_NOTE

TH = {"pause_at_c": 90.0, "resume_at_c": 75.0, "tctl_pause_at_c": 95.0, "min_cooldown_s": 60.0,
      "max_cooldown_s": 900.0, "trend": True}


def reset(edge=None, tctl=None, t=0.0) -> dict:
    temps = {k: v for k, v in (("edge_c", edge), ("tctl_c", tctl)) if v is not None}
    return {"t": t, "temps": temps}


def fits_a_phone(text: str) -> bool:
    return all(len(line) <= 40 for line in text.splitlines())


def test_resets_near_the_pause_threshold_are_heat_correlated():
    d = diagnose([reset(88.0), reset(91.5), reset(86.0, 90.0)], TH)
    assert d.heat_correlated is True and (d.hot, d.normal) == (3, 0)
    assert "heat-correlated" in d.headline and "3/3" in d.headline
    assert any("pause_at_c" in m for m in d.mitigations)
    assert not any("cwsr" in m for m in d.mitigations)
    assert fits_a_phone(d.summary)
    # the governor is the first lever for heat (issue 20), before a fixed clock_cap
    assert d.mitigations[0] == '[thermal] governor = "clock"'
    assert 'governor = "clock"' in " ".join(d.summary.split())
    on = diagnose([reset(88.0), reset(91.5)], {**TH, "governor": "clock", "setpoint_margin_c": 3.0})
    assert on.mitigations[0] == "larger thermal.setpoint_margin_c (now 3)"
    assert "governor is on" in on.summary and fits_a_phone(on.summary)


def test_resets_at_normal_temperatures_are_firmware_and_list_the_mitigations():
    d = diagnose([reset(52.0, 60.0), reset(61.0), reset(70.0, 75.0)], TH)
    assert d.heat_correlated is False and (d.hot, d.normal) == (0, 3)
    assert "not heat-correlated" in d.headline
    assert "cooling harder won't help" in d.summary
    # and a governor would not help either: the diagnosis says so (policy/governor.FIRMWARE_NOTE)
    assert FIRMWARE_NOTE in " ".join(d.summary.split())
    assert not any("governor" in m for m in d.mitigations)
    for knob in ("amdgpu.cwsr_enable=0", "amdgpu.ppfeaturemask=0xffff7fff", "HSA_ENABLE_SDMA=0",
                 "GPU_MAX_HW_QUEUES=1", "power_dpm_force_performance_level=high"):
        assert any(knob in m for m in d.mitigations), knob
    assert fits_a_phone(d.summary) and all(len(m) <= 40 for m in d.mitigations)


def test_a_hot_tctl_makes_a_reset_hot_even_with_a_cool_edge():
    assert classify_reset({"edge_c": 60.0, "tctl_c": 88.0}, TH) == "hot"  # within 8 C of 95
    assert classify_reset({"edge_c": 60.0, "tctl_c": 86.9}, TH) == "normal"
    assert classify_reset({"edge_c": 82.0}, TH) == "hot"  # exactly at the margin
    assert classify_reset({"edge_c": 81.9}, TH) == "normal"
    assert classify_reset({}, TH) == "unknown" and classify_reset(None, TH) == "unknown"
    assert classify_reset({"edge_c": None, "tctl_c": None}, TH) == "unknown"


def test_a_mostly_cool_night_with_one_hot_reset_is_still_firmware():
    d = diagnose([reset(55.0), reset(58.0), reset(60.0), reset(89.0)], TH)
    assert d.heat_correlated is False and (d.hot, d.normal) == (1, 3)


def test_an_even_mix_has_no_verdict_and_says_mixed():
    d = diagnose([reset(55.0), reset(89.0), reset(60.0), reset(88.0)], TH)
    assert d.heat_correlated is None and "mixed" in d.headline
    assert any("cwsr" in m for m in d.mitigations) and any("pause_at_c" in m for m in d.mitigations)


def test_no_resets_and_too_little_data_say_so():
    none = diagnose([], TH)
    assert none.heat_correlated is None and none.summary == "No GPU resets so far."
    blind = diagnose([reset(), reset()], TH)
    assert blind.heat_correlated is None and blind.unknown == 2
    assert "Too little data" in blind.headline and "No temps recorded" in blind.summary
    one = diagnose([reset(95.0), reset()], TH)
    assert one.heat_correlated is None and "Only 1 reset with temps" in one.summary
    assert "2 resets with temps are needed" in one.summary and fits_a_phone(one.summary)


def test_unknown_resets_do_not_dilute_a_verdict():
    d = diagnose([reset(50.0), reset(55.0), reset(), reset(), reset()], TH)
    assert d.heat_correlated is False and d.unknown == 3


def test_the_margin_follows_the_configured_threshold():
    cool_cfg = TH | {"pause_at_c": 70.0}
    assert diagnose([reset(65.0), reset(66.0)], cool_cfg).heat_correlated is True
    assert diagnose([reset(65.0), reset(66.0)], TH).heat_correlated is False


def test_mitigation_list_is_the_research_notes_list():
    assert len(MITIGATIONS) == 5


@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(0, 120)),
                          st.one_of(st.none(), st.floats(0, 120))), max_size=30))
def test_property_summary_always_fits_a_phone_and_counts_add_up(temps):
    d = diagnose([reset(e, t) for e, t in temps], TH)
    assert fits_a_phone(d.summary) and d.summary
    assert d.hot + d.normal + d.unknown == len(temps)
    if d.heat_correlated is False:
        assert d.mitigations[: len(MITIGATIONS)] == MITIGATIONS
