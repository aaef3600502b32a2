"""The traffic decision in process (service/traffic.py): the split's shares, sticky keys, shadows, the syntax.

Deterministic: every key is fixed (request ids ``req-0`` ..., user ids ``user-0`` ...), and the decision depends
on nothing else, so the statistical checks are exact reruns, not samples. tests/test_traffic_e2e.py checks that
a real server decides exactly the same way.
"""

from __future__ import annotations

import math

import pytest

from service.traffic import Rule, Traffic, bucket, parse_table, parse_weights

Z_999 = 3.2905  # two-sided 99.9 % normal quantile


def binomial_interval(n: int, p: float, z: float = Z_999) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


def test_two_thousand_requests_at_90_10_fall_within_the_binomial_interval():
    rule = Rule(split=((3, 90.0), (4, 10.0)))
    chosen = [rule.choose("alexnet", f"req-{i}", {3, 4}) for i in range(2000)]
    low, high = binomial_interval(2000, 0.10)
    assert set(chosen) == {3, 4}
    assert low <= chosen.count(4) <= high, (chosen.count(4), low, high)


@pytest.mark.parametrize("weights", [((1, 1.0), (2, 1.0), (3, 2.0)), ((7, 0.5), (9, 99.5))])
def test_any_split_gets_its_shares(weights):
    rule = Rule(split=weights)
    n = 4000
    chosen = [rule.choose("m", f"id-{i}", {v for v, _ in weights}) for i in range(n)]
    total = sum(w for _, w in weights)
    for version, weight in weights:
        low, high = binomial_interval(n, weight / total)
        assert low <= chosen.count(version) <= high, (version, chosen.count(version), low, high)


def test_sticky_keys_never_move_while_the_weights_stay():
    rule = Rule(split=((3, 90.0), (4, 10.0)))
    first = {f"user-{i}": rule.choose("alexnet", f"user-{i}", {3, 4}) for i in range(500)}
    again = Rule.of({4: 10, 3: 90}, {5: 25}, "again")  # the same weights, given again (and a shadow added)
    for _ in range(3):
        assert {k: again.choose("alexnet", k, {3, 4, 5}) for k in first} == first
    assert bucket("alexnet", "user-1") == bucket("alexnet", "user-1")  # no per-process salt


def test_moving_weight_to_the_canary_moves_only_keys_towards_it():
    before = Rule(split=((3, 90.0), (4, 10.0)))
    after = Rule(split=((3, 80.0), (4, 20.0)))
    keys = [f"user-{i}" for i in range(2000)]
    moved = [(before.choose("m", k, {3, 4}), after.choose("m", k, {3, 4})) for k in keys]
    assert all(b == a or (b, a) == (3, 4) for b, a in moved)  # nobody leaves the canary
    assert all(a == 4 for b, a in moved if b == 4)


def test_a_version_that_is_not_loaded_takes_nothing_and_its_keys_spread_by_weight():
    rule = Rule(split=((1, 50.0), (2, 30.0), (3, 20.0)))
    keys = [f"req-{i}" for i in range(3000)]
    full = {k: rule.choose("m", k, {1, 2, 3}) for k in keys}
    without_1 = {k: rule.choose("m", k, {2, 3}) for k in keys}
    assert set(without_1.values()) == {2, 3}
    assert all(without_1[k] == v for k, v in full.items() if v != 1)  # the others' keys stay
    orphans = [without_1[k] for k, v in full.items() if v == 1]
    low, high = binomial_interval(len(orphans), 30 / 50)
    assert low <= orphans.count(2) <= high
    assert rule.choose("m", "req-0", {9}) is None  # none of the split loaded: the default version answers
    assert rule.effective({2, 3}) == {2: 0.6, 3: 0.4}


def test_the_shadow_gets_its_share_and_never_the_primary():
    rule = Rule(split=((1, 1.0),), shadow=((2, 25.0), (3, 100.0)))
    copies = [rule.shadows("m", f"req-{i}", 1) for i in range(2000)]
    low, high = binomial_interval(2000, 0.25)
    assert low <= sum(2 in c for c in copies) <= high
    assert all(3 in c for c in copies)
    assert rule.shadows("m", "req-0", 3) in ([], [2])  # a request answered by v3 is not copied to v3


def test_the_split_and_the_shadow_are_independent():
    rule = Rule(split=((1, 50.0), (2, 50.0)), shadow=((3, 50.0),))
    pairs = [(rule.choose("m", f"req-{i}", {1, 2, 3}), bool(rule.shadows("m", f"req-{i}", 0))) for i in range(4000)]
    shadowed_v1 = sum(1 for v, s in pairs if v == 1 and s)
    low, high = binomial_interval(4000, 0.25)
    assert low <= shadowed_v1 <= high


def test_the_settings_syntax():
    assert parse_table("alexnet=3:90,4:10; digits = 1:1", "ALEXNET_TRAFFIC") == {
        "alexnet": ((3, 90.0), (4, 10.0)), "digits": ((1, 1.0),)}
    assert parse_table("", "ALEXNET_TRAFFIC") == {}
    assert parse_weights("5:25", "x", share=True) == ((5, 25.0),)
    traffic = Traffic.parse("alexnet=3:90,4:10", "alexnet=5:25")
    assert traffic.rule("alexnet") == Rule(((3, 90.0), (4, 10.0)), ((5, 25.0),))
    assert traffic.rule("other") == Rule()
    traffic.set("alexnet", Rule())
    assert "alexnet" not in traffic.rules


@pytest.mark.parametrize(("text", "share", "message"), [
    ("alexnet", False, "is not MODEL=VERSION:WEIGHT"),
    ("alexnet=3", False, "'3' is not VERSION:WEIGHT"),
    ("alexnet=x:1", False, "'x:1' is not VERSION:WEIGHT"),
    ("alexnet=0:1", False, "version 0 is not a version number"),
    ("alexnet=1:1,1:2", False, "version 1 is given twice"),
    ("alexnet=1:-1", False, "must not be negative"),
    ("alexnet=1:0,2:0", False, "at least one weight must be above 0"),
    ("alexnet=1:nan", False, "must be a number"),
    ("alexnet=1:1e308,2:1e308", False, "too large"),
    ("alexnet=1:1; alexnet=2:1", False, "model 'alexnet' is given twice"),
    ("bad name=1:1", False, "is not MODEL="),
    ("alexnet=5:0", True, "above 0 and at most 100"),
    ("alexnet=5:101", True, "above 0 and at most 100"),
])
def test_a_bad_spec_says_what_is_wrong(text, share, message):
    with pytest.raises(ValueError, match=message):
        parse_table(text, "ALEXNET_SHADOW" if share else "ALEXNET_TRAFFIC", share=share)


def test_settings_refuse_a_bad_spec_naming_the_variable(tmp_path):
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="ALEXNET_TRAFFIC alexnet: version 0"):
        Settings(_env_file=None, model_store=tmp_path, traffic="alexnet=0:1")
    with pytest.raises(ValidationError, match="ALEXNET_SHADOW"):
        Settings(_env_file=None, model_store=tmp_path, shadow="alexnet=2:200")
    with pytest.raises(ValidationError, match="traffic_sticky_header"):
        Settings(_env_file=None, model_store=tmp_path, traffic_sticky_header="X User")
    settings = Settings(_env_file=None, model_store=tmp_path, traffic="alexnet=1:9,2:1", shadow="alexnet=3:50")
    assert settings.traffic_rules().rule("alexnet").split == ((1, 9.0), (2, 1.0))
