"""The report of bench/compare-gluster.sh: tables, ratios, the brief's scoreboard, PNG charts.

    python3 bench/compare-report.py --results DIR --host H --size BYTES --seconds N --wall-s N
    python3 bench/compare-report.py --summary-line RESULT.json WORKLOAD SYSTEM   (one line)

Reads DIR/fio/*.json (fio's JSON, or `brick bench --json` for brick-native),
DIR/smallfiles.jsonl, DIR/scenario-*.json with their per-request latency logs (fio's
`write_lat_log` with unix-epoch times: ms, latency ns, direction, bytes, offset), and writes
DIR/report.md, DIR/summary.json and DIR/*.png.
"""
import argparse
import gzip
import json
import math
import os
import sys

WORKLOADS = [
    "randwrite-4k-qd1",
    "randwrite-4k-qd32",
    "randread-4k-qd1",
    "randread-4k-qd32",
    "seqwrite-1m-qd8",
    "seqread-1m-qd8",
]
SYSTEMS = ["local", "gluster-gfapi", "gluster-fuse", "brick-native", "brick-nbd", "brick-fuse"]
LABELS = {
    "local": "local fio (io_uring)",
    "gluster-gfapi": "GlusterFS gfapi",
    "gluster-fuse": "GlusterFS FUSE",
    "brick-native": "brickd native",
    "brick-nbd": "brickd NBD",
    "brick-fuse": "brickd FUSE",
}
# Requests in the first this-many ms after a fault may wait for failure detection (brickd's
# configured bound is 2 s); the "no request over 50 ms" target is checked outside it.
DETECTION_WINDOW_MS = 2500


def load_result(path):
    """(ops/s, MiB/s, p50 us, p99 us, p99.9 us) of one fio or brick-bench JSON file."""
    text = open(path).read()
    doc = json.loads(text[text.index("{"):])
    if "lat_us" in doc:  # brick bench
        lat = doc["lat_us"]
        return doc["iops"], doc["mib_s"], lat["p50"], lat["p99"], lat["p999"]
    job = doc["jobs"][0]
    iops = job["read"]["iops"] + job["write"]["iops"]
    mib = (job["read"]["bw"] + job["write"]["bw"]) / 1024
    side = job["write"] if job["write"]["iops"] > job["read"]["iops"] else job["read"]
    pct = side["clat_ns"].get("percentile", {})
    return (
        iops,
        mib,
        pct.get("50.000000", 0) / 1000,
        pct.get("99.000000", 0) / 1000,
        pct.get("99.900000", 0) / 1000,
    )


def summary_line(path, workload, system):
    iops, mib, p50, p99, p999 = load_result(path)
    print(
        f"  {workload:<18} {system:<14} {iops:>9.0f} IOPS {mib:>8.1f} MiB/s  "
        f"p50 {p50:>8.0f} us  p99 {p99:>8.0f} us  p99.9 {p999:>8.0f} us"
    )


def quantile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(math.ceil(q * len(sorted_values))) - 1)]


def phase_stats(samples, start_ms, end_ms):
    """Requests in flight at any time in [start_ms, end_ms): a request that waited out a
    frozen brick counts in the freeze even though it was issued just before."""
    lats = sorted(lat for t, lat, _ in samples if t < end_ms and t + lat / 1000 >= start_ms)
    if not lats:
        return {"requests": 0}
    return {
        "requests": len(lats),
        "p50_us": quantile(lats, 0.5),
        "p99_us": quantile(lats, 0.99),
        "p999_us": quantile(lats, 0.999),
        "max_us": lats[-1],
    }


def read_latency_log(path):
    """[(issue ms, latency us, offset)] of one gzip'd fio latency log. fio logs completion
    times; a request belongs to the phase in which it was issued (a request that waited out a
    frozen brick counts in the freeze, not after it)."""
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 5:
                continue
            lat_us = int(parts[1]) / 1000
            out.append((int(parts[0]) - int(lat_us / 1000), lat_us, int(parts[4])))
    return sorted(out)


def analyse_scenario(results, doc):
    samples = read_latency_log(os.path.join(results, doc["latency_log"]))
    end = max((t + lat / 1000 for t, lat, _ in samples), default=doc["back_ms"]) + 1
    healed = doc["healed_ms"] or end
    before_start = doc.get("before_ms", doc["load_start_ms"])
    before = [s for s in samples if s[0] + s[1] / 1000 < doc["fault_ms"]]
    phases = {
        "before": phase_stats(before, before_start, doc["fault_ms"]),
        "fault": phase_stats(samples, doc["fault_ms"], doc["back_ms"]),
        "fault_after_detection": phase_stats(
            samples, doc["fault_ms"] + DETECTION_WINDOW_MS, doc["back_ms"]
        ),
        "heal": phase_stats(samples, doc["back_ms"], max(healed, doc["back_ms"] + 1)),
        "after": phase_stats([s for s in samples if s[0] >= healed], healed, end),
    }
    # The 4 KiB blocks the clients wrote while the brick was away: what a heal must copy.
    dirty = {off // 4096 for t, _, off in samples if doc["fault_ms"] <= t < doc["back_ms"]}
    written_during_heal = sum(1 for t, _, _ in samples if doc["back_ms"] <= t < healed) * 4096
    doc = dict(doc)
    doc["phases"] = phases
    doc["dirty_bytes"] = len(dirty) * 4096
    doc["client_bytes_written_during_heal"] = written_during_heal
    doc["longest_request_us"] = max((lat for _, lat, _ in samples), default=0)
    doc["restart_to_healed_s"] = (
        (doc["healed_ms"] - doc["back_ms"]) / 1000 if doc["healed_ms"] else None
    )
    if doc.get("copied_bytes") is None and doc.get("sink_brick_wchar_bytes") is not None:
        # GlusterFS reports no copied bytes: what the brick that was away wrote (wchar) during
        # the heal, less what the clients wrote to it in that time, is the closest measure.
        doc["copied_bytes"] = max(0, doc["sink_brick_wchar_bytes"] - written_during_heal)
        doc["copied_bytes_measure"] = "the returning brick's wchar minus the clients' writes"
    elif doc.get("copied_bytes") is not None:
        doc["copied_bytes_measure"] = "brick heal status copied_total_bytes"
    doc["samples"] = samples
    return doc


def ratio(a, b):
    return a / b if a and b else None


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}"


def mib(b):
    return "n/a" if b is None else f"{b / (1 << 20):.1f} MiB"


def us(v):
    if v is None:
        return "n/a"
    return f"{v / 1000:.1f} ms" if v >= 10_000 else f"{v:.0f} µs"


def charts(results, table, scenarios, small, size):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "local": "#7f7f7f",
        "gluster-gfapi": "#d62728",
        "gluster-fuse": "#ff9896",
        "brick-native": "#1f77b4",
        "brick-nbd": "#2ca02c",
        "brick-fuse": "#98df8a",
    }
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    for ax, group, metric, unit in (
        (axes[0], WORKLOADS[:4], 0, "IOPS"),
        (axes[1], WORKLOADS[4:], 1, "MiB/s"),
    ):
        width = 0.8 / len(SYSTEMS)
        for i, sysname in enumerate(SYSTEMS):
            vals = [table.get((w, sysname), (0, 0))[metric] for w in group]
            xs = [j + (i - (len(SYSTEMS) - 1) / 2) * width for j in range(len(group))]
            ax.bar(xs, vals, width, label=LABELS[sysname], color=colors[sysname])
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels(group, fontsize=8)
        ax.set_ylabel(unit)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"Throughput, replica 2, {size >> 20} MiB image (log scale)")
    fig.tight_layout()
    fig.savefig(os.path.join(results, "throughput.png"), dpi=110)
    plt.close(fig)

    for kind, title in (("kill", "one brick killed for 20 s"), ("freeze", "one brick frozen (SIGSTOP) for 30 s")):
        docs = [scenarios.get((kind, s)) for s in ("gluster", "brick")]
        if not any(docs):
            continue
        fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharey=True)
        for ax, doc, name in zip(axes, docs, ("GlusterFS (gfapi)", "brickd (NBD)")):
            if not doc:
                continue
            t0 = doc["load_start_ms"]
            xs = [(t - t0) / 1000 for t, _, _ in doc["samples"]]
            ys = [max(lat, 1) / 1000 for _, lat, _ in doc["samples"]]
            ax.scatter(xs, ys, s=1, alpha=0.4, color="#d62728" if "Gluster" in name else "#1f77b4")
            for at, label in ((doc["fault_ms"], kind), (doc["back_ms"], "back"), (doc["healed_ms"], "healed")):
                if at:
                    ax.axvline((at - t0) / 1000, color="k", linestyle="--", linewidth=0.8)
                    ax.text((at - t0) / 1000, 0.02, f" {label}", fontsize=8, transform=ax.get_xaxis_transform())
            ax.set_yscale("log")
            ax.set_ylabel("request latency (ms)")
            ax.set_title(name, fontsize=10)
            ax.grid(alpha=0.3)
        axes[1].set_xlabel("seconds since the load started (when each request was issued)")
        fig.suptitle(f"4 KiB random writes, QD 4, 1000 IOPS cap: {title}")
        fig.tight_layout()
        fig.savefig(os.path.join(results, f"{kind}-latency.png"), dpi=110)
        plt.close(fig)

    if small:
        steps = ["create", "list", "stat", "read", "delete"]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        sides = [s for s in ("local", "gluster-fuse", "brick-fuse") if s in small]
        width = 0.8 / len(sides)
        for i, side in enumerate(sides):
            xs = [j + (i - (len(sides) - 1) / 2) * width for j in range(len(steps))]
            ax.bar(xs, [small[side][s] for s in steps], width, label=side,
                   color={"local": "#7f7f7f", "gluster-fuse": "#d62728", "brick-fuse": "#1f77b4"}[side])
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels(steps)
        ax.set_ylabel("seconds (log scale, lower is better)")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        ax.set_title("10,000 x 4 KiB files in one directory")
        fig.tight_layout()
        fig.savefig(os.path.join(results, "smallfiles.png"), dpi=110)
        plt.close(fig)


def report(a):
    results = a.results
    table = {}
    for w in WORKLOADS:
        for s in SYSTEMS:
            path = os.path.join(results, "fio", f"{w}-{s}.json")
            if os.path.exists(path):
                table[(w, s)] = load_result(path)
    small = {}
    small_path = os.path.join(results, "smallfiles.jsonl")
    if os.path.exists(small_path):
        for line in open(small_path):
            if line.strip():
                r = json.loads(line)
                small[r["side"]] = r["seconds"]
    scenarios = {}
    for kind in ("kill", "freeze"):
        for s in ("gluster", "brick"):
            path = os.path.join(results, f"scenario-{kind}-{s}.json")
            if os.path.exists(path):
                scenarios[(kind, s)] = analyse_scenario(results, json.load(open(path)))

    def get(w, s, i):
        return table.get((w, s), (None,) * 5)[i]

    lines = [
        f"# brickd beside GlusterFS 10 on `{a.host}`",
        "",
        f"One run of `bench/compare-gluster.sh`, {a.wall_s // 60} min {a.wall_s % 60} s. Both systems: a replica-2 "
        "volume of two bricks on the same filesystem of this machine (2 vCPUs), a "
        f"{a.size >> 20} MiB image laid out in full, {a.seconds} s per fio run. GlusterFS 10 "
        "(Debian's glusterfs-server) with `performance.strict-o-direct on`, otherwise as shipped; "
        "brickd: a real etcd and two `brickd serve` nodes (one core each). fio's clat percentiles; "
        "`brick bench` (native) measures whole requests.",
        "",
        "## Throughput and latency",
        "",
        "| workload | " + " | ".join(LABELS[s] for s in SYSTEMS) + " |",
        "|---|" + "---|" * len(SYSTEMS),
    ]
    for w in WORKLOADS:
        unit_i = 0 if "4k" in w else 1
        unit = "IOPS" if unit_i == 0 else "MiB/s"
        cells = []
        for s in SYSTEMS:
            v = get(w, s, unit_i)
            cells.append("n/a" if v is None else f"{v:,.0f} {unit}")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines += ["", "Latency p50 / p99 / p99.9:", "",
              "| workload | " + " | ".join(LABELS[s] for s in SYSTEMS) + " |",
              "|---|" + "---|" * len(SYSTEMS)]
    for w in WORKLOADS:
        cells = []
        for s in SYSTEMS:
            r = table.get((w, s))
            cells.append("n/a" if r is None else f"{us(r[2])} / {us(r[3])} / {us(r[4])}")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios (brickd / GlusterFS, and brickd / local):", "",
              "| workload | native / gfapi | NBD / gfapi | FUSE / FUSE | native / local | NBD / local |",
              "|---|---|---|---|---|---|"]
    ratios = {}
    for w in WORKLOADS:
        i = 0 if "4k" in w else 1
        r = {
            "native_over_gfapi": ratio(get(w, "brick-native", i), get(w, "gluster-gfapi", i)),
            "nbd_over_gfapi": ratio(get(w, "brick-nbd", i), get(w, "gluster-gfapi", i)),
            "fuse_over_fuse": ratio(get(w, "brick-fuse", i), get(w, "gluster-fuse", i)),
            "native_over_local": ratio(get(w, "brick-native", i), get(w, "local", i)),
            "nbd_over_local": ratio(get(w, "brick-nbd", i), get(w, "local", i)),
        }
        ratios[w] = r
        lines.append(f"| {w} | " + " | ".join(fmt_ratio(v) for v in r.values()) + " |")
    lines += ["", "![throughput](throughput.png)", ""]

    if small:
        steps = ["create", "list", "stat", "read", "delete"]
        lines += ["## Small files (10,000 x 4 KiB, one directory, caches dropped between steps)", "",
                  "| step | local | GlusterFS FUSE | brickd FUSE | GlusterFS / brickd (speed-up) |",
                  "|---|---|---|---|---|"]
        for st in steps + ["total"]:
            vals = {s: (sum(small[s].values()) if st == "total" else small[s][st]) if s in small else None
                    for s in ("local", "gluster-fuse", "brick-fuse")}
            lines.append(
                f"| {st} | " + " | ".join("n/a" if v is None else f"{v:.2f} s" for v in vals.values())
                + f" | {fmt_ratio(ratio(vals['gluster-fuse'], vals['brick-fuse']))} |"
            )
        lines += ["", "![small files](smallfiles.png)", ""]

    for kind, title in (("kill", "Heal: one brick SIGKILLed for 20 s, then brought back"),
                        ("freeze", "Frozen brick: SIGSTOP for 30 s, then SIGCONT")):
        docs = {s: scenarios.get((kind, s)) for s in ("gluster", "brick")}
        if not any(docs.values()):
            continue
        lines += [f"## {title}", "",
                  "4 KiB random writes at queue depth 4 capped at 1000 IOPS on the image, every request's "
                  "latency logged (fio; GlusterFS through gfapi, brickd through NBD).", "",
                  "| | GlusterFS | brickd |", "|---|---|---|"]

        def row(label, f):
            lines.append(f"| {label} | " + " | ".join(f(docs[s]) if docs[s] else "n/a" for s in ("gluster", "brick")) + " |")

        row("brick affected", lambda d: d["victim"])
        row("distinct bytes written while it was away", lambda d: mib(d["dirty_bytes"]))
        row("bytes copied by the heal", lambda d: mib(d.get("copied_bytes")))
        row("copied / dirty", lambda d: fmt_ratio(ratio(d.get("copied_bytes"), d["dirty_bytes"])))
        row("back to healed", lambda d: "not healed" if d["restart_to_healed_s"] is None else f"{d['restart_to_healed_s']:.1f} s")
        row("longest request", lambda d: us(d["longest_request_us"]))
        for ph in ("before", "fault", "fault_after_detection", "heal", "after"):
            row(f"{ph}: requests, p50 / p99 / p99.9 / max",
                lambda d, ph=ph: "none" if not d["phases"][ph]["requests"] else
                f"{d['phases'][ph]['requests']}: {us(d['phases'][ph]['p50_us'])} / {us(d['phases'][ph]['p99_us'])} / "
                f"{us(d['phases'][ph]['p999_us'])} / {us(d['phases'][ph]['max_us'])}")
        lines += ["", f"![{kind}]({kind}-latency.png)", ""]

    # The brief's scoreboard.
    board = []

    def target(what, target_text, measured, met):
        board.append({"what": what, "target": target_text, "measured": measured,
                      "met": met})

    # (workload, what, times GlusterFS gfapi at least, share of local at least)
    for w, what, over_gfapi, over_local in (
        ("randwrite-4k-qd32", "4 KiB random write, QD32, replica 2, native client", 10, 0.5),
        ("randread-4k-qd32", "4 KiB random read, QD32, replica 2, native client", 10, 0.5),
        ("seqwrite-1m-qd8", "1 MiB sequential write, replica 2", 3, 0.7),
        ("seqread-1m-qd8", "1 MiB sequential read, replica 2", 3, 0.7),
    ):
        g, l_ = ratios[w]["native_over_gfapi"], ratios[w]["native_over_local"]
        target(what, f"≥ {over_gfapi}x GlusterFS gfapi and ≥ {over_local:.2f} of local",
               f"{fmt_ratio(g)}x gfapi, {fmt_ratio(l_)} of local",
               None if g is None or l_ is None else (g >= over_gfapi and l_ >= over_local))
    for w, name in (("randwrite-4k-qd1", "write"), ("randread-4k-qd1", "read")):
        ours, theirs = get(w, "brick-native", 4), get(w, "gluster-gfapi", 2)
        target(f"p99.9 latency, 4 KiB random {name}, QD1", "below GlusterFS gfapi's p50",
               f"brickd p99.9 {us(ours)} vs gfapi p50 {us(theirs)}",
               None if ours is None or theirs is None else ours < theirs)
    heal = scenarios.get(("kill", "brick"))
    gheal = scenarios.get(("kill", "gluster"))
    if heal:
        rr = ratio(heal.get("copied_bytes"), heal["dirty_bytes"])
        gl = "" if not gheal else f" (GlusterFS: {fmt_ratio(ratio(gheal.get('copied_bytes'), gheal['dirty_bytes']))}x)"
        target("heal after an outage: bytes copied", "≤ 1.1x the dirty extents' bytes",
               f"{fmt_ratio(rr)}x ({mib(heal.get('copied_bytes'))} for {mib(heal['dirty_bytes'])} dirty){gl}",
               None if rr is None else rr <= 1.1)
        ph = heal["phases"]
        p99r = ratio(ph["heal"].get("p99_us"), ph["before"].get("p99_us"))
        worst = ph["heal"].get("max_us") or 0
        target("client I/O during heal", "p99 ≤ 1.5x pre-outage p99; no request over 50 ms",
               f"heal p99 / before p99 = {fmt_ratio(p99r)}; longest request during heal {us(worst)}",
               None if p99r is None else (p99r <= 1.5 and worst <= 50_000))
    target("rebalance or heal interrupted by kill -9 at random points, 50 times", "zero files lost or corrupted",
           "not measured by this benchmark: there is no rebalance yet; `cargo test` kills a heal's source "
           "once per run (brickd/cli/tests/heal.rs)", False)
    if small:
        tot = {s: sum(v.values()) for s, v in small.items()}
        r = ratio(tot.get("gluster-fuse"), tot.get("brick-fuse"))
        target("small files (create, list, stat, read, delete 10k x 4 KiB)", "≥ 5x GlusterFS FUSE",
               f"{fmt_ratio(r)}x faster in total", None if r is None else r >= 5)
    target("NFSv3 and SMB", "real clients pass",
           "not measured by this benchmark: `cargo test` runs libnfs nfs-cp/nfs-ls, smbclient and the "
           "smbtorture subset (brickd/cli/tests/nfs.rs, smb.rs; docs/smb.md lists the failures)", None)
    lines += ["## The brief's scoreboard", "", "| what | target | measured | met |", "|---|---|---|---|"]
    for b in board:
        met = {True: "**met**", False: "not met", None: "see note"}[b["met"]]
        lines.append(f"| {b['what']} | {b['target']} | {b['measured']} | {met} |")
    lines += ["", "Raw data: `fio/` (fio JSON; `*-brick-native.json` is `brick bench --json`), `lat/` "
              "(per-request latency logs: unix ms, latency ns, direction, bytes, offset), `scenario-*.json`, "
              "`smallfiles.jsonl`, `logs/` (both systems' logs).", ""]
    open(os.path.join(results, "report.md"), "w").write("\n".join(lines))
    summary = {
        "host": a.host,
        "wall_s": a.wall_s,
        "results": {f"{w}/{s}": dict(zip(("ops_s", "mib_s", "p50_us", "p99_us", "p999_us"), v))
                    for (w, s), v in table.items()},
        "ratios": ratios,
        "smallfiles_s": small,
        "scenarios": {f"{k}/{s}": {key: val for key, val in d.items() if key != "samples"}
                      for (k, s), d in scenarios.items()},
        "scoreboard": board,
    }
    json.dump(summary, open(os.path.join(results, "summary.json"), "w"), indent=1)
    charts(results, table, scenarios, small, a.size)
    print("\n".join(lines[lines.index("## The brief's scoreboard"):]))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--summary-line":
        summary_line(*sys.argv[2:5])
        return
    p = argparse.ArgumentParser()
    p.add_argument("--results", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--seconds", type=int, required=True)
    p.add_argument("--wall-s", type=int, required=True)
    report(p.parse_args())


main()
