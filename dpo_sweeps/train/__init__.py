"""Training one point: the TRL DPOTrainer run (`trainer`), precision flags shared with the reference cache
(`precision`), the reference log-prob cache (`ref_cache`), checkpoints that count once complete (`checkpoints`), the
progress display (`progress`) and the cluster glue: torch.distributed ranks and SLURM preemption (`cluster`).

Imported inside the job only (torch, transformers, TRL). May import `runs`, `search`, `config`, `models`, `data`,
`eval`, `tracking`, `report` (the model card's framework list) and the shared top level.
"""
