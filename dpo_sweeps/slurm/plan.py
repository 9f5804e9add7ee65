"""How a sweep's points become SLURM array jobs that the site accepts.

Split: n points go into ceil(n / max tasks per array) arrays of near-equal size (1200 points with MaxArraySize=1001
-> 600 + 600, not 1001 + 199), so that arrays running side by side finish at about the same time.

`array_parallelism` keeps meaning "points running at once", for the whole sweep: the budget K is split between the
arrays (`%k` each, the k summing to K), which lets all of them start at once with no dependency to wait on. When there
are more arrays than K, the arrays are put in K lanes: the arrays of a lane run one after the other
(`--dependency=afterany:<previous array>`, so a failed point does not block the next array) and each lane runs one
point at a time. Either way no more than K points of the sweep run at once. (A single dependency chain would keep K
too, but every array's tail, its last straggling points, would hold back the whole next array.)

A sweep that the site's job limits cannot take at all (MaxJobCount, MaxSubmitJobs) is refused here, before sbatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dpo_sweeps.slurm.site import SiteLimits


class SweepTooLargeError(ValueError):
    """The site would refuse part of the sweep: nothing was submitted."""


@dataclass
class ArrayPlan:
    """One sbatch --array: the positions (in the list of points to submit) it holds, its %k, the array it waits on."""

    start: int
    stop: int
    parallelism: int
    after: int | None  # index of the array this one waits on (afterany), None = starts at once

    @property
    def size(self) -> int:
        return self.stop - self.start


def split(n_points: int, max_per_array: int, parallelism: int) -> list[ArrayPlan]:
    """Near-equal arrays of at most `max_per_array` points; `parallelism` shared as described in the module doc."""
    if n_points <= 0:
        return []
    n_arrays = math.ceil(n_points / max(1, max_per_array))
    base, extra = divmod(n_points, n_arrays)
    bounds, start = [], 0
    for i in range(n_arrays):
        size = base + (1 if i < extra else 0)
        bounds.append((start, start + size))
        start += size
    parallelism = max(1, parallelism)
    lanes = min(n_arrays, parallelism)
    share, more = divmod(parallelism, lanes)
    plans = []
    for i, (a, b) in enumerate(bounds):
        lane = i % lanes
        plans.append(
            ArrayPlan(
                start=a,
                stop=b,
                parallelism=min(b - a, share + (1 if lane < more else 0)),
                after=i - lanes if i >= lanes else None,
            )
        )
    return plans


def check_fits(n_points: int, limits: SiteLimits, total_points: int | None = None) -> None:
    """Raise SweepTooLargeError naming the limit, the numbers and the fix when the site cannot take n_points jobs."""
    for free, why in limits.free_slots():
        if n_points > free:
            skipped = (total_points or n_points) - n_points
            done = f" ({skipped} completed point(s) already left out)" if skipped > 0 else ""
            raise SweepTooLargeError(
                f"This sweep would submit {n_points} SLURM job(s) (one array task per point{done}), but the cluster "
                f"accepts only {max(free, 0)} more: {why}. Nothing was submitted. Fix: sweep fewer points per "
                f"command (e.g. split a range into parts of at most {max(free, 0)} and run them one after the other; "
                "a rerun of the same sweep skips its completed points), or wait until queued jobs have finished."
            )


def describe(plans: list[ArrayPlan], limits: SiteLimits, parallelism: int, skipped: int = 0) -> str:
    """The split in words, for dry_run=true and the submission log."""
    n = sum(p.size for p in plans)
    if not plans:
        return f"SLURM: nothing to submit ({skipped} completed point(s) skipped)."
    lines = [
        f"SLURM: {n} point(s) to submit in {len(plans)} array job(s) (site: {limits.describe()}); "
        f"at most {parallelism} point(s) running at once (array_parallelism)"
        + (f"; {skipped} completed point(s) skipped" if skipped else "")
    ]
    for i, p in enumerate(plans):
        wait = f", starts after array {p.after + 1} has ended" if p.after is not None else ""
        lines.append(f"  array {i + 1}: points {p.start}..{p.stop - 1} ({p.size} tasks, %{p.parallelism}{wait})")
    return "\n".join(lines)
