"""What `ray job submit` runs: one campaign, joining the cluster the job runs on.

ray job submit --working-dir . -- python jobs/run_campaign.py campaigns/demo.yaml

Ray runs the job in a temporary copy of the working dir, deleted after the job, so a
relative `output_dir` goes under $FTSAFE_RUNS_ROOT (or --runs-root) instead, at the same place
relative to the submitted directory; unset, such a run is refused before anything starts.
`ray job stop` ends the run like Ctrl-C; submitting the job again resumes it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import NoReturn

from ftsafe_ray.errors import FtsafeError
from ftsafe_ray.pipeline import run_campaign
from ftsafe_ray.plan import RUNS_ROOT_ENV
from ftsafe_ray.progress import PlainProgress


def _stopped(signum: int, frame: object) -> NoReturn:
    # `ray job stop` sends SIGTERM: unwind as Ctrl-C does, so the run's cleanup runs.
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", help="campaign YAML file")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument(
        "--runs-root",
        default=os.environ.get(RUNS_ROOT_ENV),
        help=f"where relative run directories go (default: ${RUNS_ROOT_ENV})",
    )
    args = parser.parse_args()
    if args.runs_root:
        os.environ[RUNS_ROOT_ENV] = args.runs_root
    signal.signal(signal.SIGTERM, _stopped)
    try:
        outcome = run_campaign(
            args.campaign, retry_failed=args.retry_failed, progress=PlainProgress()
        )
    except FtsafeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; submit the job again to resume", file=sys.stderr)
        return 130
    print(f"results in {outcome.location}")
    print(f"finished in {outcome.seconds:.0f}s: {outcome.counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
