"""dpo_sweeps: Hydra-composed DPO fine-tuning sweeps.

Kept import-light on purpose: `python -m dpo_sweeps --help`, `--cfg job` and composing/submitting a sweep must not
import torch, transformers or TRL. The heavy stack is imported inside the job (`dpo_sweeps.train.trainer`).
"""

__version__ = "0.1.0"
