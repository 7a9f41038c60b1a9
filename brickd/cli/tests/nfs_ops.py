#!/usr/bin/env python3
"""Real libnfs (libnfs.so.13, Debian's libnfs13) calls for what libnfs-utils' binaries
(nfs-cp, nfs-ls, nfs-cat) cannot do: mkdir, rmdir, rename, unlink, truncate, stat, and
writes and reads at given offsets. One call per run:

    nfs_ops.py 'nfs://127.0.0.1/?version=3&nfsport=P&mountport=P' OP ARGS...

OPs: mkdir PATH | rmdir PATH | unlink PATH | rename OLD NEW | truncate PATH SIZE |
     stat PATH (prints "size=N mode=0oM ino=N") | pwrite PATH OFFSET TEXT (creates PATH) |
     pread PATH OFFSET LEN (prints the bytes as text)
Exit status 0 on success; 1 with libnfs's error on stderr (e.g. "NFS3ERR_NOTEMPTY").
"""
import ctypes
import os
import sys

lib = ctypes.CDLL("libnfs.so.13")
lib.nfs_init_context.restype = ctypes.c_void_p
lib.nfs_get_error.restype = ctypes.c_char_p
lib.nfs_get_error.argtypes = [ctypes.c_void_p]
lib.nfs_destroy_context.argtypes = [ctypes.c_void_p]


class NfsUrl(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]


lib.nfs_parse_url_dir.restype = ctypes.POINTER(NfsUrl)
lib.nfs_parse_url_dir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.nfs_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
for name in ("nfs_mkdir", "nfs_rmdir", "nfs_unlink"):
    getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.nfs_rename.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
lib.nfs_truncate.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64]
lib.nfs_stat64.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
lib.nfs_open.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
lib.nfs_creat.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
lib.nfs_close.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
lib.nfs_pwrite.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p]
lib.nfs_pread.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p]


class Stat64(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
        "atime", "mtime", "ctime", "atime_nsec", "mtime_nsec", "ctime_nsec", "used")]


def fail(nfs, what):
    sys.stderr.write(f"{what}: {lib.nfs_get_error(nfs).decode(errors='replace')}\n")
    sys.exit(1)


def check(nfs, rc, what):
    if rc < 0:
        fail(nfs, what)
    return rc


def open_file(nfs, path, create):
    fh = ctypes.c_void_p()
    if create:
        rc = lib.nfs_open(nfs, path, os.O_RDWR, ctypes.byref(fh))
        if rc < 0:
            rc = lib.nfs_creat(nfs, path, 0o644, ctypes.byref(fh))
    else:
        rc = lib.nfs_open(nfs, path, os.O_RDONLY, ctypes.byref(fh))
    check(nfs, rc, "open")
    return fh


def main():
    url, op, args = sys.argv[1].encode(), sys.argv[2], [a.encode() for a in sys.argv[3:]]
    nfs = lib.nfs_init_context()
    if not nfs:
        sys.exit("nfs_init_context failed")
    parsed = lib.nfs_parse_url_dir(nfs, url)
    if not parsed:
        fail(nfs, "url")
    check(nfs, lib.nfs_mount(nfs, parsed.contents.server, parsed.contents.path), "mount")
    if op in ("mkdir", "rmdir", "unlink"):
        check(nfs, getattr(lib, "nfs_" + op)(nfs, args[0]), op)
    elif op == "rename":
        check(nfs, lib.nfs_rename(nfs, args[0], args[1]), op)
    elif op == "truncate":
        check(nfs, lib.nfs_truncate(nfs, args[0], int(args[1])), op)
    elif op == "stat":
        st = Stat64()
        check(nfs, lib.nfs_stat64(nfs, args[0], ctypes.byref(st)), op)
        print(f"size={st.size} mode={oct(st.mode & 0o7777)} ino={st.ino}")
    elif op == "pwrite":
        fh = open_file(nfs, args[0], True)
        data = args[2]
        n = check(nfs, lib.nfs_pwrite(nfs, fh, int(args[1]), len(data), data), op)
        if n != len(data):
            sys.exit(f"short write: {n} of {len(data)}")
        check(nfs, lib.nfs_close(nfs, fh), "close")
    elif op == "pread":
        fh = open_file(nfs, args[0], False)
        buf = ctypes.create_string_buffer(int(args[2]))
        n = check(nfs, lib.nfs_pread(nfs, fh, int(args[1]), int(args[2]), buf), op)
        sys.stdout.write(buf.raw[:n].decode(errors="replace"))
        check(nfs, lib.nfs_close(nfs, fh), "close")
    else:
        sys.exit(f"unknown op {op}")
    lib.nfs_destroy_context(nfs)


if __name__ == "__main__":
    main()
