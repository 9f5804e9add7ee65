"""The submitit internals our launcher (`launcher.py`) relies on, checked when the launcher is imported, so that a
submitit release that changed them fails at once with both versions named, not deep inside a submission.

What the launcher uses that submitit does not document as public (all in `launcher.SweepSlurmLauncher`):
1. `SlurmExecutor._internal_process_submissions(delayed_submissions)`: a one-point sweep, submitted as a plain job;
2. `Executor._submit_command(command)`: one sbatch for a whole array;
3. `SlurmExecutor._submitit_command_str`: the command the batch script runs (a property);
4. `JobPaths.get_first_id_independent_folder(folder)`: where the pickles are written before the job id is known;
5. `JobPaths.move_temporary_file(tmp_path, name)`: each pickle moved to its task's `submitted_pickle`;
6. `DelayedSubmission.set_timeout(timeout_min, max_num_timeout)` and `.dump(filepath)`, and the sbatch parameter
   `map_count` ("used internally") that makes `_submit_command` submit an array;
plus `AutoExecutor._executor` (the SlurmExecutor with the stock launcher's parameter mapping) and
`SlurmJob(folder, job_id, tasks)`. In the job (train/cluster.py, any submitit launcher): `JobEnvironment._usr_sig()`
and the handler `SignalHandler.checkpoint_and_try_requeue(signum, frame)` that our preemption guard calls itself.
The pickling trick: the launcher and Hydra's state are pickled once and their bytes reused in every task's pickle
(`__reduce_ex__` returning `(pickle.loads, (bytes,))`). That needs `DelayedSubmission.dump` to write with cloudpickle
(which honours `__reduce_ex__`) and the job to read with plain `pickle.load` (`utils.pickle_load`).

Checked by presence, signature and, for the pickling, the names the two functions call (their bytecode), without
running anything: importing submitit costs ~50 ms, and Hydra imports the launcher at every start.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib import metadata

# The versions the launcher was tested with (the whole SLURM suite on the local cluster); pyproject pins this range.
TESTED_RANGE = ">=1.5.4,<1.5.5"
TESTED_VERSIONS = "1.5.4"


class SubmititChangedError(ImportError):
    """The installed submitit lacks an internal the launcher relies on. An ImportError, so Hydra's plugin scan prints
    it as a warning and other launchers keep working."""


def _params(func: Callable) -> list[str]:
    return list(inspect.signature(func).parameters)


def _calls(func: Callable, name: str) -> bool:
    code = getattr(inspect.unwrap(getattr(func, "__func__", func)), "__code__", None)
    return code is not None and name in code.co_names


def problems() -> list[str]:
    """What the installed submitit lacks of what the launcher uses (see the module doc); [] when all is there."""
    from submitit.auto import auto
    from submitit.core import job_environment, utils
    from submitit.slurm import slurm

    found: list[str] = []

    def need(ok: Callable[[], bool], what: str) -> None:
        try:
            good = ok()
        except (AttributeError, TypeError, ValueError):
            good = False
        if not good:
            found.append(what)

    ex, paths, delayed = slurm.SlurmExecutor, utils.JobPaths, utils.DelayedSubmission
    need(
        lambda: _params(ex._internal_process_submissions)[:2] == ["self", "delayed_submissions"],
        "SlurmExecutor._internal_process_submissions(self, delayed_submissions)",
    )
    need(lambda: _params(ex._submit_command)[:2] == ["self", "command"], "SlurmExecutor._submit_command(self, command)")
    need(
        lambda: isinstance(inspect.getattr_static(ex, "_submitit_command_str"), property),
        "SlurmExecutor._submitit_command_str (a property)",
    )
    need(
        lambda: _params(paths.get_first_id_independent_folder)[:1] == ["folder"],
        "JobPaths.get_first_id_independent_folder(folder)",
    )
    need(
        lambda: _params(paths.move_temporary_file)[:3] == ["self", "tmp_path", "name"],
        "JobPaths.move_temporary_file(self, tmp_path, name)",
    )
    need(
        lambda: all(
            isinstance(inspect.getattr_static(paths, p), property) for p in ("submitted_pickle", "result_pickle")
        ),
        "JobPaths.submitted_pickle / result_pickle",
    )
    need(
        lambda: _params(delayed.set_timeout)[:3] == ["self", "timeout_min", "max_num_timeout"],
        "DelayedSubmission.set_timeout(self, timeout_min, max_num_timeout)",
    )
    need(lambda: _params(delayed.dump)[:2] == ["self", "filepath"], "DelayedSubmission.dump(self, filepath)")
    need(
        lambda: "map_count" in _params(slurm._make_sbatch_string),
        "the sbatch parameter map_count (_make_sbatch_string)",
    )
    need(lambda: "python" in _params(ex.__init__), "SlurmExecutor(folder, max_num_timeout, python=...)")
    need(
        lambda: _params(slurm.SlurmJob.__init__)[:4] == ["self", "folder", "job_id", "tasks"],
        "SlurmJob(folder, job_id, tasks)",
    )
    need(lambda: _calls(auto.AutoExecutor.__init__, "_executor"), "AutoExecutor._executor")
    # The job side (train/cluster.py's PreemptionGuard): the USR signal, and submitit's handler that it calls itself.
    env, handler = job_environment.JobEnvironment, job_environment.SignalHandler
    need(lambda: isinstance(env._usr_sig(), int), "JobEnvironment._usr_sig() (the preemption signal)")
    need(
        lambda: (
            _params(handler.checkpoint_and_try_requeue)[:3] == ["self", "signum", "frame"]
            and _calls(env._handle_signals, "checkpoint_and_try_requeue")
        ),
        "SignalHandler.checkpoint_and_try_requeue(self, signum, frame), installed by JobEnvironment._handle_signals",
    )
    need(
        lambda: _calls(delayed.dump, "cloudpickle_dump") and _calls(delayed.load, "pickle_load"),
        "DelayedSubmission.dump writing with cloudpickle and .load reading with pickle (the pickled-once trick)",
    )
    return found


def check() -> None:
    """Raise SubmititChangedError naming the installed and tested versions when an internal has changed."""
    missing = problems()
    if not missing:
        return
    try:
        installed = metadata.version("submitit")
    except metadata.PackageNotFoundError:
        installed = "(version unknown)"
    raise SubmititChangedError(
        f"dpo_sweeps' SLURM launcher cannot work with the installed submitit {installed}: it relies on submitit "
        f"internals that this version changed: {'; '.join(missing)}. Tested with submitit {TESTED_VERSIONS} "
        f"(pyproject pins 'submitit{TESTED_RANGE}'). Fix: pip install 'submitit{TESTED_RANGE}', or use the stock "
        "launcher: hydra.launcher._target_=hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher."
    )
