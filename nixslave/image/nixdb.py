"""The guest's Nix database, edited on the host as a copy and put back whole.

A guest that has Nix must know every path in its store as valid, or its
own ``nix-store --verify`` and garbage collector would treat the upgrade's
paths as junk (and its GC would delete them).  The database is a small
SQLite file: it is downloaded, changed with the sqlite3 module (the rows
``nix-store --load-db`` would write, with the image's epoch as registration
time, for reproducibility), and renamed back over the original.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from nixslave import nix
from nixslave.errors import ImageError

DB = "nix/var/nix/db/db.sqlite"
EPOCH = 1


@dataclass(frozen=True)
class Registration:
    """One path as ``nix-store --dump-db`` describes it."""

    path: str
    nar_hash: str      # as the database stores it: "sha256:<hex>"
    nar_size: int
    deriver: str | None
    references: tuple[str, ...]


def parse_dump(text: str) -> list[Registration]:
    """Parse ``nix-store --dump-db`` output: path, hash, size, deriver, n, refs…"""
    lines = text.splitlines()
    out: list[Registration] = []
    i = 0
    try:
        while i < len(lines):
            if not lines[i]:
                i += 1
                continue
            path, digest, size, deriver = lines[i:i + 4]
            n = int(lines[i + 4])
            refs = tuple(lines[i + 5:i + 5 + n])
            i += 5 + n
            if ":" not in digest:
                digest = f"sha256:{digest}"
            out.append(Registration(path, digest, int(size), deriver or None, refs))
    except (ValueError, IndexError):
        raise ImageError("nix-store --dump-db printed something unexpected", where="nix",
                         hint="check the host's Nix installation") from None
    return out


def registrations(paths: list[str]) -> list[Registration]:
    return parse_dump(nix.dump_db(paths)) if paths else []


def check_clean(local: Path, where: str) -> None:
    """A non-empty write-ahead log means the guest did not shut down cleanly."""
    wal = local.with_name(local.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise ImageError("the guest's Nix database has an unapplied write-ahead log",
                         where=where, hint="boot the guest once and shut it down cleanly, "
                                           "or run `nixslave image repair`")


def register(db: Path, regs: list[Registration]) -> int:
    """Add ``regs`` to the database file ``db``; returns how many were new."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA foreign_keys = ON")
        new = 0
        for r in regs:
            cur = con.execute(
                "INSERT OR IGNORE INTO ValidPaths (path, hash, registrationTime, deriver, "
                "narSize) VALUES (?, ?, ?, ?, ?)",
                (r.path, r.nar_hash, EPOCH, r.deriver, r.nar_size))
            new += cur.rowcount
        ids = dict(con.execute("SELECT path, id FROM ValidPaths"))
        for r in regs:
            for ref in r.references:
                if ref not in ids:
                    raise ImageError(f"{r.path} refers to {ref}, which the guest lacks",
                                     where=str(db), hint="the closure is incomplete; this is "
                                                         "a bug, please report it")
                con.execute("INSERT OR IGNORE INTO Refs (referrer, reference) VALUES (?, ?)",
                            (ids[r.path], ids[ref]))
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    _drop_sidefiles(db)
    return new


def unregister(db: Path, paths: list[str]) -> int:
    """Forget ``paths`` (after the garbage collection removed them)."""
    con = sqlite3.connect(db)
    try:
        gone = 0
        for p in paths:
            row = con.execute("SELECT id FROM ValidPaths WHERE path = ?", (p,)).fetchone()
            if row is None:
                continue
            con.execute("DELETE FROM Refs WHERE referrer = ?", (row[0],))
            con.execute("DELETE FROM DerivationOutputs WHERE drv = ?", (row[0],))
            con.execute("DELETE FROM ValidPaths WHERE id = ?", (row[0],))
            gone += 1
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    _drop_sidefiles(db)
    return gone


def valid_paths(db: Path) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in con.execute("SELECT path FROM ValidPaths")}
    finally:
        con.close()


def _drop_sidefiles(db: Path) -> None:
    for suffix in ("-wal", "-shm", "-journal"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
