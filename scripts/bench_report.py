#!/usr/bin/env python3
"""Writes the results of `make bench` as a markdown table and an SVG chart.

    python3 scripts/bench_report.py RESULTS.jsonl OUT_PREFIX

reads the JSON lines scripts/bench.sh wrote (one object per measured cell or section) and writes
OUT_PREFIX.md (tables) and OUT_PREFIX.svg (throughput and p50/p99 side by side, pbkv next to
Redis, and each comparison of pbkv clusters such as plaintext vs TLS). Standard library only.

Records, by "section":
  meta             date, machine, versions, settings (several lines are merged)
  matrix           one load-generator run: shape, clients, system (pbkv | redis | redis-wait),
                   throughput, p50_us, p99_us, errors, viewservice_calls_per_op; pipeline (operations
                   outstanding per client, absent = 1)
  compare          the same, for two or more pbkv clusters: group, title, system (cluster name)
  redis-benchmark  clients, value_size, op (SET | GET), throughput, p50_us; pipeline (-P, absent = 1)
  failover, vs-failover, transfer, memory, memory-redis   as `pbkv bench-cluster --json` prints them
"""

import json
import math
import sys
from html import escape

MATRIX_SYSTEMS = [("pbkv", "pbkv"), ("redis", "Redis SET/GET"), ("redis-wait", "Redis SET+WAIT 1")]
MATRIX_COLORS = ["#2a6fb0", "#e8871e", "#3a9a48"]
# Comparisons of pbkv clusters: the first (the baseline) in pbkv's blue, the others apart from Redis's colours.
COMPARE_COLORS = ["#2a6fb0", "#8e5ab5", "#c8453c", "#6b6b6b", "#17a2a8"]


def load(path):
    """The records of a JSON-lines file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def meta_of(records):
    meta = {}
    for r in records:
        if r.get("section") == "meta":
            meta.update({k: v for k, v in r.items() if k != "section"})
    return meta


def ordered(values):
    """Distinct values in order of first appearance."""
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def matrix_rows(records):
    """[(clients, shape, {system: record})] of the pbkv-vs-Redis matrix, in run order."""
    cells = {}
    for r in records:
        if r.get("section") == "matrix":
            cells.setdefault((r["clients"], r["shape"]), {})[r["system"]] = r
    return [(c, s, systems) for (c, s), systems in cells.items()]


def compare_groups(records):
    """[(group, title, [system…], [(clients, shape, {system: record})])] of the comparisons."""
    groups = []
    for group in ordered(r["group"] for r in records if r.get("section") == "compare"):
        rs = [r for r in records if r.get("section") == "compare" and r["group"] == group]
        cells = {}
        for r in rs:
            # A comparison's figures are means of two runs: its client count may read 50.0.
            clients = int(r["clients"]) if float(r["clients"]).is_integer() else r["clients"]
            cells.setdefault((clients, r["shape"]), {})[r["system"]] = r
        systems = ordered(r["system"] for r in rs)
        groups.append((group, rs[0].get("title", group), systems, [(c, s, v) for (c, s), v in cells.items()]))
    return groups


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def num(record, field, fmt="{:.0f}"):
    return fmt.format(record[field]) if record and field in record else "–"


def cpu(record, *processes, fmt="{:.1f}"):
    """The CPU µs per operation cells of the named processes."""
    return [num(record, f"cpu_us_per_op_{name}", fmt) for name in processes]


def cpu_sum(record, processes):
    """The CPU µs per operation of the named processes together; None if one is missing."""
    if not record or any(f"cpu_us_per_op_{name}" not in record for name in processes):
        return None
    return sum(record[f"cpu_us_per_op_{name}"] for name in processes)


def markdown(records, svg_name=None):
    """The results as markdown: a header, one table per part of the run."""
    meta = meta_of(records)
    out = [f"# pbkv bench — {meta.get('date', 'date unknown')}", ""]
    facts = []
    if "cores" in meta:
        facts.append(f"{meta['cores']} cores, kernel {meta.get('kernel', '?')}")
    if "redis_version" in meta:
        facts.append(f"Redis {meta['redis_version']}")
    if "seconds_per_cell" in meta:
        facts.append(f"each cell {meta['seconds_per_cell']} s after 1 s warm-up, {meta.get('keys', '?')} keys, one request outstanding per client (N pipelined in cells marked PN)")
    if "load_before" in meta:
        facts.append(f"load average before: {meta['load_before']}" + (f", after the matrix: {meta['load_after_matrix']}" if "load_after_matrix" in meta else ""))
    out += [f"- {fact}" for fact in facts]
    if meta.get("note"):
        out += ["", f"**{meta['note']}**"]
    if svg_name:
        out += ["", f"![throughput and latency per cell]({svg_name})"]

    rows = matrix_rows(records)
    if rows:
        out += ["", "## pbkv next to Redis", "",
                "Throughput in operations per second, latencies in µs; ÷SET and ÷WAIT are pbkv's throughput over Redis's.", "",
                "| shape | pbkv op/s | p50 | p99 | SET op/s | p50 | p99 | +WAIT 1 op/s | p50 | p99 | ÷SET | ÷WAIT | VS calls/op | pbkv errors |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for clients, shape, s in rows:
            p, r, w = s.get("pbkv"), s.get("redis"), s.get("redis-wait")
            out.append("| " + " | ".join([
                f"c={clients} {shape}",
                num(p, "throughput"), num(p, "p50_us"), num(p, "p99_us"),
                num(r, "throughput"), num(r, "p50_us"), num(r, "p99_us"),
                num(w, "throughput"), num(w, "p50_us"), num(w, "p99_us"),
                ratio(p and p["throughput"], r and r["throughput"]), ratio(p and p["throughput"], w and w["throughput"]),
                num(p, "viewservice_calls_per_op", "{:.5f}"), num(p, "errors", "{}")]) + " |")

    cpu_rows = [(clients, shape, s) for clients, shape, s in rows
                if any("cpu_us_per_op_primary" in (s.get(system) or {}) for system in ("pbkv", "redis", "redis-wait"))]
    if cpu_rows:
        out += ["", "## CPU per operation", "",
                "CPU time (user + system) per operation in µs over each cell's measured window, per process "
                "(`pbkv bench --cpu-of`); \"server ÷ Redis\" is pbkv's primary + backup over Redis's primary + replica "
                "for SET+WAIT 1. The load generator's own CPU is in the client columns (pbkv's client library, or the "
                "same generator's Redis protocol code).", "",
                "| shape | pbkv primary | backup | view service | client | Redis SET primary | replica | client "
                "| +WAIT 1 primary | replica | client | server ÷ Redis |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for clients, shape, s in cpu_rows:
            p, r, w = s.get("pbkv"), s.get("redis"), s.get("redis-wait")
            out.append("| " + " | ".join(
                [f"c={clients} {shape}"] + cpu(p, "primary", "backup") + cpu(p, "vs", fmt="{:.2f}") + cpu(p, "client")
                + cpu(r, "primary", "replica", "client") + cpu(w, "primary", "replica", "client") + [
                ratio(cpu_sum(p, ("primary", "backup")), cpu_sum(w, ("primary", "replica")))]) + " |")

    for _, title, systems, cells in compare_groups(records):
        base, others = systems[0], systems[1:]
        out += ["", f"## {title}", "",
                f"The same load generator against {len(systems)} pbkv clusters of this run, cell by cell in turn and then in reverse order, the mean of the two runs; "
                f"ratios are each cluster over `{base}`.", ""]
        header = ["shape"]
        for system in systems:
            header += [f"{system} op/s", "p50", "p99"]
        for other in others:
            header += [f"{other}÷{base} op/s", f"{other}÷{base} p50"]
        out += ["| " + " | ".join(header) + " |", "|---" + "|--:" * (len(header) - 1) + "|"]
        for clients, shape, s in cells:
            row = [f"c={clients} {shape}"]
            for system in systems:
                row += [num(s.get(system), "throughput"), num(s.get(system), "p50_us"), num(s.get(system), "p99_us")]
            for other in others:
                b, o = s.get(base), s.get(other)
                row += [ratio(o and o["throughput"], b and b["throughput"]), ratio(o and o["p50_us"], b and b["p50_us"])]
            out.append("| " + " | ".join(row) + " |")

    checks = [r for r in records if r.get("section") == "redis-benchmark"]
    if checks:
        out += ["", "## Cross-check: redis-benchmark", "", "Plain SET/GET with the same concurrency and value size.", "",
                "| clients | value | op | op/s | p50 µs |", "|--:|--:|---|--:|--:|"]
        for r in checks:
            op = r["op"] + (f" -P {r['pipeline']}" if r.get("pipeline", 1) > 1 else "")
            out.append(f"| {r['clients']} | {r['value_size']} B | {op} | {r['throughput']:.0f} | {r['p50_us']:.0f} |")
    pipelined = pipeline_rows(records)
    if pipelined:
        out += ["", "## Pipelining next to redis-benchmark -P", "",
                "pbkv with N operations outstanding per client (each Put answered once the backup applied it) over "
                "redis-benchmark -P N SET (answered before replication: no WAIT) and over the same load generator's "
                "SET+WAIT 1 pipelined N deep (WAIT-equivalent durability).", "",
                "| cell | pbkv op/s | redis-benchmark -P op/s | ÷redis-benchmark | SET+WAIT 1 op/s | ÷WAIT |", "|---|--:|--:|--:|--:|--:|"]
        for clients, shape, p, check, w in pipelined:
            out.append("| " + " | ".join([
                f"c={clients} {shape}", num(p, "throughput"), num(check, "throughput"),
                ratio(p and p["throughput"], check and check["throughput"]),
                num(w, "throughput"), ratio(p and p["throughput"], w and w["throughput"])]) + " |")

    cluster = cluster_lines(records)
    if cluster:
        out += ["", "## Failover, state transfer, memory (`pbkv bench-cluster`)", ""] + [f"- {line}" for line in cluster]
    return "\n".join(out) + "\n"


def pipeline_rows(records):
    """[(clients, shape, pbkv record, redis-benchmark -P record, redis-wait record)] for each
    pipelined matrix cell that redis-benchmark measured with the same -P and client count."""
    rows = []
    for clients, shape, systems in matrix_rows(records):
        p = systems.get("pbkv")
        depth = p.get("pipeline", 1) if p else 1
        if depth <= 1:
            continue
        check = next((r for r in records if r.get("section") == "redis-benchmark" and r.get("op") == "SET"
                      and r.get("pipeline", 1) == depth and r["clients"] == clients), None)
        rows.append((clients, shape, p, check, systems.get("redis-wait")))
    return rows


def cluster_lines(records):
    lines = []
    for r in records:
        section = r.get("section")
        if section == "failover":
            lines.append(f"failover ({r.get('view_service', 'file')} view service): {r['trials']} trials, gap median {r['median_ms']:.0f} ms, max {r['max_ms']:.0f} ms")
        elif section == "vs-failover":
            lines.append(f"view service failover: new leader answers after median {r['leader']['median_ms']:.0f} ms; "
                         f"leader and primary killed together: first acknowledged Put after median {r['leader_and_primary']['median_ms']:.0f} ms")
        elif section == "transfer":
            lines.append(f"transfer (compression {'on' if r['compression'] else 'off'}): {r['keys']} keys of {r['value_size']} B "
                         f"({r['logical_bytes'] / 1e6:.1f} MB logical) in {r['transfer_seconds']:.2f} s, {r['mb_per_s']:.0f} MB/s logical; "
                         f"backup in the acknowledged view {r['seconds_to_backup']:.2f} s after its start; primary wrote {r['wire_bytes'] / 1e6:.1f} MB")
        elif section == "wire" and "mode" in r:
            lines.append(f"wire bytes per Put, {r['values']}, {r['mode']}: client↔primary {r['client_bytes_per_put']:.0f} B, "
                         f"primary↔backup {r['forward_bytes_per_put']:.0f} B, CPU {r['cpu_us_per_put']:.1f} µs (pbkv bench-wire)")
        elif section == "wire":
            lines.append(f"deflate streams: {r['stream_memory_bytes_per_connection_end'] / 1024:.1f} KiB resident per connection end")
        elif section in ("memory", "memory-redis"):
            who = "pbkv primary" if section == "memory" else "Redis (DEBUG POPULATE)"
            lines.append(f"memory, {who}: {r['keys']} keys of 16 B, RSS {r['rss_before'] / 1048576:.0f} MiB → "
                         f"{r['rss_after'] / 1048576:.0f} MiB, {r['bytes_per_key']:.1f} bytes per key")
    return lines


# --- SVG ----------------------------------------------------------------------------------------

PANEL_W, PANEL_H = 540, 270
PLOT_LEFT, PLOT_TOP, PLOT_BOTTOM = 64, 46, 58  # margins inside a panel
GAP = 24


def nice_axis(top):
    """(axis maximum, tick step): a step of 1, 2, 2.5 or 5 × 10^k giving at most 6 ticks above 0."""
    if top <= 0:
        return 1.0, 0.25
    exponent = math.floor(math.log10(top))
    for k in (exponent - 1, exponent):
        for m in (1, 2, 2.5, 5):
            step = m * 10 ** k
            if top / step <= 6:
                return math.ceil(top / step - 1e-9) * step, step
    return top, top / 4  # not reached: 5 × 10^exponent always fits


def short(value):
    """A bar's figure: 5008, 25.6k."""
    return f"{value / 1000:.1f}k" if value >= 10000 else f"{value:.0f}"


def tick_label(value, axis_max):
    """An axis figure, in thousands on an axis that reaches 10000: 0, 5k, 10k; else 0, 100, 2.5."""
    return f"{value / 1000:g}k" if axis_max >= 10000 and value else f"{value:g}"


class Panel:
    """One bar chart: groups of bars (one group per cell), an y axis with ticks, a title."""

    def __init__(self, x, y, title, unit, groups, series, latency):
        self.x, self.y, self.title, self.unit = x, y, title, unit
        self.groups = groups  # [(label, [value or (p50, p99) per series])]
        self.series = series  # [(name, color)]
        self.latency = latency

    def render(self):
        out = [f'<g transform="translate({self.x},{self.y})">',
               f'<rect width="{PANEL_W}" height="{PANEL_H}" fill="#ffffff" stroke="#d0d0d0"/>',
               f'<text x="{PANEL_W / 2}" y="20" text-anchor="middle" class="title">{escape(self.title)}</text>']
        plot_w = PANEL_W - PLOT_LEFT - 16
        plot_h = PANEL_H - PLOT_TOP - PLOT_BOTTOM
        values = [v for _, vs in self.groups for v in vs if v is not None]
        top = max((v[1] if self.latency else v) for v in values) if values else 0
        axis_max, step = nice_axis(top)
        scale = plot_h / axis_max
        base_y = PLOT_TOP + plot_h
        tick = 0.0
        while tick <= axis_max + step / 1000:
            ty = base_y - tick * scale
            out.append(f'<line x1="{PLOT_LEFT}" y1="{ty:.1f}" x2="{PLOT_LEFT + plot_w}" y2="{ty:.1f}" stroke="#ececec"/>')
            out.append(f'<text x="{PLOT_LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" class="tick">{tick_label(tick, axis_max)}</text>')
            tick += step
        out.append(f'<line x1="{PLOT_LEFT}" y1="{PLOT_TOP}" x2="{PLOT_LEFT}" y2="{base_y}" stroke="#444"/>')
        out.append(f'<line x1="{PLOT_LEFT}" y1="{base_y}" x2="{PLOT_LEFT + plot_w}" y2="{base_y}" stroke="#444"/>')
        out.append(f'<text transform="translate(16,{PLOT_TOP + plot_h / 2}) rotate(-90)" text-anchor="middle" class="axis">{escape(self.unit)}</text>')
        group_w = plot_w / max(1, len(self.groups))
        bar_w = min(34, group_w * 0.8 / max(1, len(self.series)))
        for g, (label, vs) in enumerate(self.groups):
            gx = PLOT_LEFT + g * group_w + (group_w - bar_w * len(self.series)) / 2
            for i, v in enumerate(vs):
                if v is None:
                    continue
                bx = gx + i * bar_w
                color = self.series[i][1]
                name = self.series[i][0]
                if self.latency:
                    p50, p99 = v
                    out.append(self.bar(bx, base_y, bar_w, p99 * scale, color, 0.35, f"{name} {label}: p99 {p99:.0f} µs"))
                    out.append(self.bar(bx, base_y, bar_w, p50 * scale, color, 1, f"{name} {label}: p50 {p50:.0f} µs"))
                    out.append(f'<text x="{bx + bar_w / 2:.1f}" y="{base_y - p99 * scale - 3:.1f}" text-anchor="middle" class="value">{short(p99)}</text>')
                    if p50 * scale >= 14:  # the p50 figure inside its bar, when it fits
                        out.append(f'<text x="{bx + bar_w / 2 - 1:.1f}" y="{base_y - p50 * scale + 11:.1f}" text-anchor="middle" class="inside">{short(p50)}</text>')
                else:
                    out.append(self.bar(bx, base_y, bar_w, v * scale, color, 1, f"{name} {label}: {v:.0f} op/s"))
                    out.append(f'<text x="{bx + bar_w / 2:.1f}" y="{base_y - v * scale - 3:.1f}" text-anchor="middle" class="value">{short(v)}</text>')
            lines = label.split("\n")
            for n, line in enumerate(lines):
                out.append(f'<text x="{PLOT_LEFT + (g + 0.5) * group_w:.1f}" y="{base_y + 16 + 13 * n}" text-anchor="middle" class="label">{escape(line)}</text>')
        out.append("</g>")
        return "\n".join(out)

    @staticmethod
    def bar(x, base_y, w, h, color, opacity, tip):
        return (f'<rect x="{x:.1f}" y="{base_y - h:.1f}" width="{w - 2:.1f}" height="{h:.1f}" fill="{color}" '
                f'fill-opacity="{opacity}"><title>{escape(tip)}</title></rect>')


def legend(x, y, series, latency_note):
    out = [f'<g transform="translate({x},{y})">']
    cx = 0
    for name, color in series:
        out.append(f'<rect x="{cx}" y="-10" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{cx + 17}" y="0" class="legend">{escape(name)}</text>')
        cx += 30 + 7 * len(name)
    if latency_note:
        out.append(f'<rect x="{cx + 20}" y="-10" width="12" height="12" fill="#555"/>'
                   f'<rect x="{cx + 32}" y="-10" width="12" height="12" fill="#555" fill-opacity="0.35"/>')
        out.append(f'<text x="{cx + 50}" y="0" class="legend">latency: p50 (solid) inside p99 (light)</text>')
    out.append("</g>")
    return "\n".join(out)


def cell_label(shape):
    """'16B write-only' → two lines: '16 B' / 'write-only'."""
    size, _, mix = shape.partition(" ")
    return size.replace("B", " B") + "\n" + mix


def chart_rows(records):
    """[(heading, [(series name, colour)], [(cell label, [record or None per series])])]: one
    row of two panels per client count of the matrix and of each comparison."""
    rows = []
    matrix = matrix_rows(records)

    def depth(systems):
        return max((r.get("pipeline", 1) for r in systems.values()), default=1)

    # One row per client count, and per pipeline depth (pipelined cells have an axis of their own).
    for clients, pipeline in ordered((c, depth(s)) for c, _, s in matrix):
        cells = [(cell_label(shape), [s.get(key) for key, _ in MATRIX_SYSTEMS]) for c, shape, s in matrix
                 if c == clients and depth(s) == pipeline]
        series = [(name, MATRIX_COLORS[i]) for i, (_, name) in enumerate(MATRIX_SYSTEMS)]
        outstanding = f", {pipeline} outstanding each" if pipeline > 1 else ""
        rows.append((f"pbkv next to Redis, {clients} client{'s' if clients != 1 else ''}{outstanding}", series, cells))
    for _, title, systems, group_cells in compare_groups(records):
        for clients in ordered(c for c, _, _ in group_cells):
            cells = [(cell_label(shape), [s.get(system) for system in systems]) for c, shape, s in group_cells if c == clients]
            series = [(system, COMPARE_COLORS[i % len(COMPARE_COLORS)]) for i, system in enumerate(systems)]
            rows.append((f"{title}, {clients} client{'s' if clients != 1 else ''}", series, cells))
    return rows


def svg(records):
    """The chart: per row, throughput (left) and p50/p99 latency (right), a legend per row."""
    meta = meta_of(records)
    rows = chart_rows(records)
    width = 2 * PANEL_W + 3 * GAP
    row_h = PANEL_H + 52
    height = 56 + len(rows) * row_h + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           "<style>.title{font-size:14px;font-weight:bold}.tick{font-size:10px;fill:#555}.axis{font-size:11px;fill:#333}"
           ".label{font-size:11px;fill:#222}.value{font-size:9px;fill:#333}.inside{font-size:9px;fill:#ffffff}.legend{font-size:12px}.heading{font-size:13px;fill:#222}"
           ".head{font-size:16px;font-weight:bold}</style>",
           f'<rect width="{width}" height="{height}" fill="#fafafa"/>',
           f'<text x="{GAP}" y="26" class="head">pbkv bench — {escape(str(meta.get("date", "")))}</text>',
           f'<text x="{GAP}" y="44" class="heading">{escape(subtitle(meta))}</text>']
    for n, (heading, series, cells) in enumerate(rows):
        y = 56 + n * row_h
        out.append(legend(GAP, y + 22, series, latency_note=True))
        throughput = [(label, [r["throughput"] if r else None for r in rs]) for label, rs in cells]
        latency = [(label, [(r["p50_us"], r["p99_us"]) if r else None for r in rs]) for label, rs in cells]
        out.append(Panel(GAP, y + 36, f"{heading}: throughput", "operations per second", throughput, series, False).render())
        out.append(Panel(2 * GAP + PANEL_W, y + 36, f"{heading}: latency", "µs per operation", latency, series, True).render())
    out.append("</svg>")
    return "\n".join(out) + "\n"


def subtitle(meta):
    parts = []
    if "cores" in meta:
        parts.append(f"{meta['cores']} cores")
    if "seconds_per_cell" in meta:
        parts.append(f"{meta['seconds_per_cell']} s per cell")
    parts.append("one request outstanding per client, loopback")
    if meta.get("note"):
        parts.append(meta["note"])
    return "; ".join(parts)


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    records = load(argv[1])
    prefix = argv[2]
    svg_name = prefix.rsplit("/", 1)[-1] + ".svg"
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(records, svg_name))
    with open(prefix + ".svg", "w", encoding="utf-8") as f:
        f.write(svg(records))
    print(f"results written: {prefix}.md, {prefix}.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
