"""Token-budget packing."""

from serve_app.core.packing import pack_by_token_budget


def test_every_index_once_longest_first():
    lengths = [5, 100, 3, 40, 40, 7]
    batches = pack_by_token_budget(lengths, max_forward_tokens=100, max_batch_size=10, min_length_ratio=0.0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_padded_cost_within_budget_unless_alone():
    lengths = [17, 3, 250, 9, 9, 64, 1, 33] * 5
    for budget in (16, 64, 300, 1000):
        for batch in pack_by_token_budget(lengths, budget, 1000, 0.0):
            cost = len(batch) * max(lengths[i] for i in batch)
            assert cost <= budget or len(batch) == 1


def test_max_batch_size_caps_count():
    assert all(len(b) <= 4 for b in pack_by_token_budget([1] * 10, 10_000, 4, 0.0))


def test_length_ratio_bounds_padding_waste():
    lengths = [256, 250, 200, 130, 120, 30, 20, 12, 9]
    batches = pack_by_token_budget(lengths, 100_000, 1000, min_length_ratio=0.5)
    assert [[lengths[i] for i in b] for b in batches] == [[256, 250, 200, 130], [120], [30, 20], [12, 9]]
    for batch in batches:
        assert min(lengths[i] for i in batch) >= 0.5 * max(lengths[i] for i in batch)
    assert len(pack_by_token_budget(lengths, 100_000, 1000, min_length_ratio=0.0)) == 1
