"""Tests of scripts/bench_report.py (`make test` runs them: python3 -m unittest discover -s scripts)."""

import contextlib
import io
import json
import os
import re
import tempfile
import unittest
import xml.dom.minidom

import bench_report


def cell(section, clients, shape, system, throughput, p50, p99, **extra):
    return dict(section=section, clients=clients, shape=shape, system=system, throughput=throughput,
                p50_us=p50, p99_us=p99, errors=0, viewservice_calls_per_op=0.00002, **extra)


RECORDS = [
    {"section": "meta", "date": "2026-12-04 18:00 UTC", "cores": 2, "kernel": "6.1", "redis_version": "7.0.15",
     "seconds_per_cell": 5, "keys": 10000, "load_before": "1.00 1.00 1.00"},
    cell("matrix", 1, "16B write-only", "pbkv", 5000, 190, 400),
    cell("matrix", 1, "16B write-only", "redis", 12500, 80, 150),
    cell("matrix", 1, "16B write-only", "redis-wait", 8000, 115, 300),
    cell("matrix", 50, "16B write-only", "pbkv", 25000, 1900, 4800, cpu_us_per_op_client=40.5, cpu_us_per_op_vs=0.21,
         cpu_us_per_op_primary=36.0, cpu_us_per_op_backup=9.0),
    cell("matrix", 50, "16B write-only", "redis", 40000, 1100, 2200, cpu_us_per_op_client=20.0,
         cpu_us_per_op_primary=10.0, cpu_us_per_op_replica=4.0),
    cell("matrix", 50, "16B write-only", "redis-wait", 32000, 1350, 3400, cpu_us_per_op_client=25.0,
         cpu_us_per_op_primary=12.0, cpu_us_per_op_replica=3.0),
    {"section": "meta", "load_after_matrix": "2.00 1.50 1.20"},
    cell("compare", 1, "16B write-only", "plaintext", 5000, 200, 400, group="tls", title="TLS cost"),
    cell("compare", 1, "16B write-only", "tls", 4000, 250, 500, group="tls", title="TLS cost"),
    cell("compare", 50, "16B write-only", "plaintext", 25000, 1900, 4800, group="tls", title="TLS cost"),
    cell("compare", 50, "16B write-only", "tls", 20000, 2300, 5500, group="tls", title="TLS cost"),
    {"section": "redis-benchmark", "clients": 1, "value_size": 16, "op": "SET", "throughput": 13749.0, "p50_us": 63},
    cell("matrix", 1, "16B write-only P16", "pbkv", 30000, 500, 900, pipeline=16),
    cell("matrix", 1, "16B write-only P16", "redis", 90000, 170, 300, pipeline=16),
    cell("matrix", 1, "16B write-only P16", "redis-wait", 20000, 800, 1500, pipeline=16),
    {"section": "redis-benchmark", "clients": 1, "value_size": 16, "pipeline": 16, "op": "SET", "throughput": 120000.0, "p50_us": 120},
    {"section": "failover", "view_service": "file", "trials": 5, "median_ms": 523.0, "max_ms": 537.0, "gaps_ms": [523.0]},
    {"section": "memory-redis", "keys": 1000, "value_size": 16, "rss_before": 1048576, "rss_after": 3145728, "bytes_per_key": 2097.2},
    {"section": "wire", "values": "1 KiB JSON records", "mode": "stream", "client_bytes_per_put": 251.4,
     "forward_bytes_per_put": 240.2, "cpu_us_per_put": 61.5},
    {"section": "wire", "stream_memory_bytes_per_connection_end": 41984},
]


class MarkdownTests(unittest.TestCase):
    def test_rows_carry_figures_and_ratios(self):
        md = bench_report.markdown(RECORDS, "latest.svg")
        self.assertIn("# pbkv bench — 2026-12-04 18:00 UTC", md)
        self.assertIn("load average before: 1.00 1.00 1.00, after the matrix: 2.00 1.50 1.20", md)
        self.assertIn("![throughput and latency per cell](latest.svg)", md)
        # pbkv ÷ SET = 5000 / 12500, ÷ WAIT = 5000 / 8000.
        self.assertIn("| c=1 16B write-only | 5000 | 190 | 400 | 12500 | 80 | 150 | 8000 | 115 | 300 | 0.40 | 0.62 | 0.00002 | 0 |", md)
        self.assertIn("| c=50 16B write-only | 25000 | 1900 | 4800 | 40000 | 1100 | 2200 | 32000 | 1350 | 3400 | 0.62 | 0.78 | 0.00002 | 0 |", md)
        # TLS over plaintext: op/s 4000 / 5000, p50 250 / 200.
        self.assertIn("## TLS cost", md)
        self.assertIn("| shape | plaintext op/s | p50 | p99 | tls op/s | p50 | p99 | tls÷plaintext op/s | tls÷plaintext p50 |", md)
        self.assertIn("| c=1 16B write-only | 5000 | 200 | 400 | 4000 | 250 | 500 | 0.80 | 1.25 |", md)
        self.assertIn("| 1 | 16 B | SET | 13749 | 63 |", md)
        self.assertIn("| 1 | 16 B | SET -P 16 | 120000 | 120 |", md)
        # Pipelined: pbkv ÷ redis-benchmark -P 16 = 30000 / 120000, ÷ SET+WAIT pipelined = 30000 / 20000.
        self.assertIn("## Pipelining next to redis-benchmark -P", md)
        self.assertIn("| c=1 16B write-only P16 | 30000 | 120000 | 0.25 | 20000 | 1.50 |", md)
        # CPU: only the cell that has figures; server ÷ Redis = (36 + 9) / (12 + 3).
        self.assertIn("## CPU per operation", md)
        self.assertIn("| c=50 16B write-only | 36.0 | 9.0 | 0.21 | 40.5 | 10.0 | 4.0 | 20.0 | 12.0 | 3.0 | 25.0 | 3.00 |", md)
        self.assertNotIn("| c=1 16B write-only | – |", md)
        self.assertIn("- failover (file view service): 5 trials, gap median 523 ms, max 537 ms", md)
        self.assertIn("- memory, Redis (DEBUG POPULATE): 1000 keys of 16 B, RSS 1 MiB → 3 MiB, 2097.2 bytes per key", md)

    def test_a_comparison_of_means_names_its_client_count_whole(self):
        # The means of two runs came as 50.0 clients before bench.sh kept shared numbers as they are.
        records = [dict(r, clients=float(r["clients"])) if r.get("section") == "compare" else r for r in RECORDS]
        md = bench_report.markdown(records)
        self.assertIn("| c=50 16B write-only | 25000 | 1900 | 4800 | 20000 | 2300 | 5500 | 0.80 | 1.21 |", md)
        self.assertNotIn("c=50.0", md)

    def test_missing_system_shows_a_dash(self):
        md = bench_report.markdown([r for r in RECORDS if r.get("system") != "redis-wait"])
        self.assertIn("| c=1 16B write-only | 5000 | 190 | 400 | 12500 | 80 | 150 | – | – | – | 0.40 | – | 0.00002 | 0 |", md)


class SvgTests(unittest.TestCase):
    def setUp(self):
        self.text = bench_report.svg(RECORDS)
        self.doc = xml.dom.minidom.parseString(self.text)

    def bars(self):
        """{tooltip: (height, y)} of every bar."""
        out = {}
        for rect in self.doc.getElementsByTagName("rect"):
            titles = rect.getElementsByTagName("title")
            if titles:
                out[titles[0].firstChild.data] = (float(rect.getAttribute("height")), float(rect.getAttribute("y")))
        return out

    def test_one_bar_per_figure_with_legend_and_axes(self):
        bars = self.bars()
        # Matrix: 3 rows (1 client, 1 client pipelined, 50 clients) x 1 cell x 3 systems, a throughput
        # bar and p50 + p99 bars each; TLS: 2 x 1 x 2.
        self.assertEqual(len(bars), (3 * 3 + 2 * 2) * 3)
        texts = [t.firstChild.data for t in self.doc.getElementsByTagName("text") if t.firstChild]
        for expected in ["pbkv", "Redis SET/GET", "Redis SET+WAIT 1", "plaintext", "tls",
                         "operations per second", "µs per operation", "TLS cost, 50 clients: latency",
                         "pbkv next to Redis, 1 client: throughput",
                         "pbkv next to Redis, 1 client, 16 outstanding each: throughput", "latency: p50 (solid) inside p99 (light)"]:
            self.assertIn(expected, texts)

    def test_bar_heights_are_proportional_on_a_nice_axis(self):
        bars = self.bars()
        plot_h = bench_report.PANEL_H - bench_report.PLOT_TOP - bench_report.PLOT_BOTTOM
        # 1 client: the tallest throughput bar, 12500, fills an axis of 12500 (steps of 2500).
        self.assertAlmostEqual(bars["Redis SET/GET 16 B\nwrite-only: 12500 op/s"][0], plot_h, delta=0.06)
        self.assertAlmostEqual(bars["pbkv 16 B\nwrite-only: 5000 op/s"][0], plot_h * 5000 / 12500, delta=0.06)
        # 50 clients: 40000 on an axis of 40000 (steps of 10000).
        self.assertAlmostEqual(bars["pbkv 16 B\nwrite-only: 25000 op/s"][0], plot_h * 25000 / 40000, delta=0.06)
        # Latency: p50 drawn inside p99 from the same base line.
        p50_h, p50_y = bars["pbkv 16 B\nwrite-only: p50 190 µs"]
        p99_h, p99_y = bars["pbkv 16 B\nwrite-only: p99 400 µs"]
        self.assertAlmostEqual(p50_h / p99_h, 190 / 400, delta=0.06)
        self.assertAlmostEqual(p50_y + p50_h, p99_y + p99_h, delta=0.06)

    def test_axis_maxima_are_round(self):
        self.assertEqual(bench_report.nice_axis(25629), (30000, 5000))
        self.assertEqual(bench_report.nice_axis(409), (500, 100))
        self.assertEqual(bench_report.nice_axis(6001), (8000, 2000))
        self.assertEqual(bench_report.tick_label(15000, 30000), "15k")
        self.assertEqual(bench_report.tick_label(2.5, 10), "2.5")


class MainTests(unittest.TestCase):
    def test_writes_markdown_and_a_valid_svg(self):
        with tempfile.TemporaryDirectory() as d:
            source = os.path.join(d, "latest.jsonl")
            with open(source, "w", encoding="utf-8") as f:
                f.write("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                self.assertEqual(bench_report.main(["bench_report.py", source, os.path.join(d, "latest")]), 0)
            self.assertIn("latest.md", printed.getvalue())
            with open(os.path.join(d, "latest.md"), encoding="utf-8") as f:
                text = f.read()
                self.assertTrue(re.search(r"^## TLS cost$", text, re.M))
                self.assertIn("wire bytes per Put, 1 KiB JSON records, stream: client↔primary 251 B, primary↔backup 240 B, CPU 61.5 µs", text)
                self.assertIn("deflate streams: 41.0 KiB resident per connection end", text)
            xml.dom.minidom.parse(os.path.join(d, "latest.svg"))


if __name__ == "__main__":
    unittest.main()
