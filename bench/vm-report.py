"""Report of bench/vm.sh: medians per workload and side, ratios against local, targets."""
import json
import statistics
import sys

results, small_path, out, size, secs, rounds, cores, client_cpus = sys.argv[1:9]
size = int(size)
rows = [json.loads(line) for line in open(results)]
small = {r["side"]: r for r in (json.loads(line) for line in open(small_path))}
# Issue 7's targets (replica 1, through NBD): 4 KiB random at QD32 >= 50% of local IOPS,
# 1 MiB sequential >= 70% of local throughput.
targets = {"randread-4k-qd32": 0.5, "randwrite-4k-qd32": 0.5, "seqread-1m-qd8": 0.7, "seqwrite-1m-qd8": 0.7}
names = list(dict.fromkeys(r["workload"] for r in rows))
print(f"\nfio: local io_uring (O_DIRECT); the nbd engine through qemu-nbd on a local file (io_uring, "
      f"O_DIRECT) and through the NBD gateway brickd hosts; io_uring (O_DIRECT) on `brick mount`; "
      f"replica 1, brickd dev with {cores} cores, fio on CPUs {client_cpus}; {size >> 20} MiB image, {secs} s x {rounds} "
      f"interleaved rounds, medians")
print(f"{'workload':<18} {'local IOPS':>10} {'qemu-nbd':>9} {'nbd IOPS':>9} {'fuse IOPS':>9} {'local MiB/s':>11} "
      f"{'nbd MiB/s':>9} {'fuse MiB/s':>10} {'nbd/local':>9} {'target':>6} {'met':>4} {'nbd/qemu-nbd':>12} "
      f"{'fuse/local':>10}")
summary = []
for w in names:
    rs = [r for r in rows if r["workload"] == w]

    def med(k):
        return statistics.median(r[k] for r in rs)

    li, ni, fi, qi = med("local_iops"), med("nbd_iops"), med("fuse_iops"), med("qemu_nbd_iops")
    lm, nm, fm = med("local_mib_s"), med("nbd_mib_s"), med("fuse_mib_s")
    ratio = ni / li if li else 0.0
    fuse_ratio = fi / li if li else 0.0
    qemu_ratio = ni / qi if qi else 0.0
    t = targets.get(w)
    met = None if t is None else ratio >= t
    summary.append({"workload": w, "local_iops": li, "nbd_iops": ni, "fuse_iops": fi,
                    "qemu_nbd_iops": qi, "qemu_nbd_mib_s": med("qemu_nbd_mib_s"), "nbd_to_qemu_nbd": qemu_ratio,
                    "local_mib_s": lm, "nbd_mib_s": nm, "fuse_mib_s": fm,
                    "local_p99_us": med("local_p99_us"), "nbd_p99_us": med("nbd_p99_us"),
                    "fuse_p99_us": med("fuse_p99_us"), "nbd_ratio": ratio, "fuse_ratio": fuse_ratio,
                    "target": t, "met": met, "rounds": rs})
    print(f"{w:<18} {li:>10.0f} {qi:>9.0f} {ni:>9.0f} {fi:>9.0f} {lm:>11.0f} {nm:>9.0f} {fm:>10.0f} {ratio:>9.2f} "
          f"{t if t else '':>6} {'' if met is None else ('yes' if met else 'NO'):>4} {qemu_ratio:>12.2f} "
          f"{fuse_ratio:>10.2f}")
print("\nsmall files (10,000 x 4 KiB, one directory, caches dropped between steps), seconds:")
print(f"{'step':<8} {'local':>8} {'fuse':>8} {'fuse/local':>10}")
for step in ["create", "list", "stat", "read", "delete"]:
    lo, fu = small["local"]["seconds"][step], small["fuse"]["seconds"][step]
    print(f"{step:<8} {lo:>8.3f} {fu:>8.3f} {fu / lo if lo else 0:>10.1f}")
if out:
    json.dump({"size_bytes": size, "seconds": int(secs), "rounds": int(rounds), "cores": int(cores),
               "client_cpus": client_cpus,
               "workloads": summary, "small_files": small}, open(out, "w"), indent=2)
    print(f"\nwritten to {out}")
