"""Submitting sweeps to SLURM: what the nodes offer against what a profile asks for (`resources`, the pre-launch
sinfo check), the site's limits (`site`), the split into arrays (`plan`), the pre-launch check's SLURM side
(`checks`), what that check hands the launcher (`handoff`), the launcher (`launcher`) and the submitit internals it
relies on (`submitit_compat`), the one client for squeue / sacct / scontrol with the one map from SLURM states to a
point's (`client`), and the wait for results, dead tasks included, with the rank that ended a multi-task job first
(`watch`), the re-plan of a point that died of memory, resubmitted with a plan that fits (`replan`); a site profile written from sinfo / scontrol / sacctmgr (`profile`, `python -m dpo_sweeps.slurm.profile`).

Import-light: only `launcher` imports submitit at import, to check the private submitit internals it uses
(`submitit_compat`, ~50 ms). May import `runs`, `config` (folder names) and the shared top level (`console`: the line
every rank prints as it starts, which `watch` looks for in a job's log); the sweep stage and `status` import it,
never the other way round.
"""
