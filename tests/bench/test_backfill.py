"""The pure helpers of bench/backfill.py and its table in bench/report.py (the benchmark itself is a script)."""

from __future__ import annotations

from bench.backfill import busy_share, distinct_queries, gcs_address
from bench.report import backfill_ratios, backfill_table


def test_queries_are_distinct_seeded_and_in_words_only():
    queries = distinct_queries(2000, seed=4)
    assert len(set(queries)) == 2000 and queries == distinct_queries(2000, seed=4)
    assert not any(ch.isdigit() for q in queries for ch in q)  # the small tokenizer maps digits to <unk>
    assert all(4 <= len(q.split()) <= 7 for q in queries)


def test_the_gcs_address_is_the_node_ip_with_the_port_it_was_started_on():
    cmdlines = [["/x/raylet", "--node-ip-address=10.0.0.9"],
                ["/x/ray/gcs/gcs_server", "--gcs_server_port=0", "--node-ip-address=192.0.2.2"]]
    assert gcs_address(cmdlines, 41234) == "192.0.2.2:41234"
    assert gcs_address(cmdlines[:1], 41234) is None


def test_busy_share_ratios_and_table():
    info = {"compute": {"busy_s": 10.0}}
    assert busy_share(info, {"compute": {"busy_s": 19.0}}, 10.0) == 0.9
    phases = {"online": {"online": {"p50_ms": 10, "p95_ms": 20}, "busy": 0.3},
              "backfill": {"job": {"rows_per_s": 90.0}, "busy": 0.95},
              "both": {"online": {"p50_ms": 11, "p95_ms": 30}, "busy": 0.97, "job": {"rows_per_s": 60.0}},
              "dedicated": {"job": {"rows_per_s": 100.0}}}
    found = backfill_ratios(phases)
    assert found == {"p95_both_vs_alone": 1.5, "backfill_vs_dedicated": 0.9, "busy_both": 0.97}
    text = backfill_table({"phases": phases})
    assert "| both | 11.0 | 30.0 | 60 | 97% |" in text
    assert "| online p95, backfill running / alone | 1.50 | <= 1.25 | no |" in text
    assert "| backfill alone / dedicated pool (rows/s) | 0.90 | >= 0.9 | yes |" in text
