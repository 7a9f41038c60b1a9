"""The small-file test: 10,000 x 4 KiB in one directory, create, list, stat, read, delete,
with the page cache dropped between steps (when root). Prints one JSON line of seconds per step.

    python3 bench/smallfiles.py SIDE DIR   (DIR must not exist; it is removed at the end)
"""
import json
import os
import sys
import time

FILES = 10_000
DATA = b"s" * 4096


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError:
        pass  # not root: caches stay, as they would for a user


def main():
    side, d = sys.argv[1], sys.argv[2]
    os.mkdir(d)
    steps = {}
    t = time.monotonic()
    for i in range(FILES):
        with open(f"{d}/f{i:05}", "wb") as f:
            f.write(DATA)
    steps["create"] = time.monotonic() - t
    drop_caches()
    t = time.monotonic()
    names = os.listdir(d)
    steps["list"] = time.monotonic() - t
    assert len(names) == FILES, len(names)
    drop_caches()
    t = time.monotonic()
    for i in range(FILES):
        os.stat(f"{d}/f{i:05}")
    steps["stat"] = time.monotonic() - t
    drop_caches()
    t = time.monotonic()
    for i in range(FILES):
        with open(f"{d}/f{i:05}", "rb") as f:
            assert f.read() == DATA
    steps["read"] = time.monotonic() - t
    drop_caches()
    t = time.monotonic()
    for i in range(FILES):
        os.unlink(f"{d}/f{i:05}")
    steps["delete"] = time.monotonic() - t
    os.rmdir(d)
    print(json.dumps({"side": side, "files": FILES, "seconds": steps}))


main()
