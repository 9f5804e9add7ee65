"""What a sweep and a run tell a person afterwards: the sweep report (`sweep_report`: tables, plots, objective),
seeds aggregated with intervals and the reward-KL frontier (`seeds`), and the model card (`model_card`).
`python -m dpo_sweeps.report <sweep folder>` (`__main__`).

Import-light: matplotlib only inside the plotting functions. May import `runs` and `config`.
"""
