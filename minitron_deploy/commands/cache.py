"""`minitron-deploy cache ls|gc`: inspect and clean the artifact store."""

from __future__ import annotations

import argparse

from minitron_deploy.commands.run import workdir
from minitron_deploy.console import info, print_json
from minitron_deploy.pipeline import Pipeline
from minitron_deploy.pipeline.store import ArtifactStore, dir_size
from minitron_deploy.profile import load_profile

NAME = "cache"
HELP = "List (ls) or garbage-collect (gc) the artifact store."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["ls", "gc"])
    p.add_argument("--workdir", help="default: $MINITRON_WORKDIR or ./work")
    p.add_argument(
        "--keep-profile",
        action="append",
        default=[],
        metavar="PROFILE",
        help="gc: keep the artifacts this profile needs, remove the rest",
    )
    p.add_argument("--older-than-days", type=float, help="gc: only remove older entries")
    p.add_argument("--verify", action="store_true", help="ls: check every file's SHA-256")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    root = workdir(args)
    store = ArtifactStore(root / "cache")
    if args.action == "ls":
        rows = []
        for art in store.entries():
            ok = bool(art.manifest) and store.get(art.stage, art.key) is not None
            if ok and args.verify:
                ok = store.verify(art)
            rows.append(
                {
                    "stage": art.stage,
                    "key": art.key[:16],
                    "node": art.manifest.get("node"),
                    "valid": ok,
                    "bytes": dir_size(art.path),
                    "path": str(art.path),
                }
            )
        if args.json:
            print_json({"entries": rows})
        else:
            for r in rows:
                print(
                    f"{r['stage']:<11} {r['key']:<17} {r['node'] or '?':<28} "
                    f"{r['bytes'] / 1e6:9.1f} MB {'ok' if r['valid'] else 'CORRUPT'}"
                )
            info(f"{len(rows)} entries in {store.root}")
        return 0
    keep = None
    if args.keep_profile:
        keep = set()
        for prof in args.keep_profile:
            keep |= {n.key for n in Pipeline(load_profile(prof), root, prof).nodes}
    days = args.older_than_days
    removed = store.gc(keep, None if days is None else days * 86400)
    if args.json:
        print_json({"removed": [str(p) for p in removed]})
    else:
        info(f"removed {len(removed)} entries")
    return 0
