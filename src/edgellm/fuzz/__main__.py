"""Command line: `python -m edgellm.fuzz TARGET|all --runs N --seed S [--corpus DIR] [--json] [--replay]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .runner import corpus_files, fuzz, replay
from .targets import ALL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgellm.fuzz", description=__doc__)
    parser.add_argument("target", choices=[*ALL, "all", "canary"])
    parser.add_argument("--runs", type=int, default=1000, help="mutated inputs per target (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the run is a function of this seed (default 0)")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=Path("tests/fuzz/corpus"),
        help="folder of <target>/<sha1> inputs: extra seeds, and where failures are saved",
    )
    parser.add_argument("--replay", action="store_true", help="run the corpus files as they are, no mutation")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.runs < 0:
        parser.error("--runs must be >= 0")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    summaries = []
    for target in ALL if args.target == "all" else (args.target,):
        if args.replay:
            s = replay(target, corpus_files(args.corpus, target), progress=None if args.quiet else progress)
        else:
            s = fuzz(target, args.runs, args.seed, corpus=args.corpus, progress=None if args.quiet else progress)
        summaries.append(s)
        if not args.json:
            print(
                f"{target}: {s.executions} executions in {s.seconds:.1f} s ({s.exec_per_sec:.0f}/s), "
                f"{s.failures} failures, {s.flaky} flaky, {s.refused} refused with edgellm's errors; "
                f"memory cap {s.memory_cap_mb:.0f} MB "
                f"(baseline {s.baseline_mb:.0f} MB), time cap {s.time_cap_s:g} s"
            )
            for sig, n in s.by_failure.items():
                print(f"  {n} x {sig}: {s.examples[sig]}")
            for path in s.saved:
                print(f"  saved {path}")
    if args.json:
        out = [s.to_dict() for s in summaries]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
    return 1 if any(s.failures for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
