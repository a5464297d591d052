"""What `ray job submit` runs: one campaign, joining the cluster the job runs on.

ray job submit --working-dir . -- python jobs/run_campaign.py campaigns/demo.yaml
"""

from __future__ import annotations

import argparse
import sys

from ftsafe_ray.errors import FtsafeError
from ftsafe_ray.pipeline import run_campaign
from ftsafe_ray.progress import PlainProgress


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", help="campaign YAML file")
    parser.add_argument("--retry-failed", action="store_true")
    args = parser.parse_args()
    try:
        outcome = run_campaign(
            args.campaign, retry_failed=args.retry_failed, progress=PlainProgress()
        )
    except FtsafeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"finished in {outcome.seconds:.0f}s: {outcome.counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
