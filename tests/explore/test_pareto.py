from bitmos.explore.pareto import dominates, parse_objectives, pareto_front


def test_hand_example_two_objectives():
    rows = [
        {"tps": 10, "e": 5},   # 0: front
        {"tps": 20, "e": 8},   # 1: front
        {"tps": 15, "e": 9},   # 2: dominated by 1
        {"tps": 5, "e": 6},    # 3: dominated by 0
        {"tps": 30, "e": 20},  # 4: front (fastest)
        {"tps": 10, "e": 5},   # 5: equal to 0: neither dominates, both stay
        {"tps": 1},            # 6: missing an objective: left out
    ]
    assert pareto_front(rows, ["max:tps", "min:e"]) == [0, 1, 4, 5]


def test_three_objectives_and_senses():
    rows = [{"a": 1, "b": 1, "c": 1}, {"a": 2, "b": 2, "c": 2}, {"a": 2, "b": 1, "c": 2}]
    # maximize a, minimize b, minimize c: row 2 dominates row 1; row 0 is cheapest in c
    assert pareto_front(rows, ["max:a", "min:b", "min:c"]) == [0, 2]
    assert parse_objectives(["max:x", "min:y"]) == [("x", 1), ("y", -1)]
    assert dominates((2, 2), (1, 2)) and not dominates((1, 2), (1, 2))
