"""What a sweep and a run tell a person afterwards: the sweep report (`sweep_report`: tables, plots, objective),
seeds aggregated with intervals and the reward-KL frontier (`seeds`), the model card (`model_card`), and the
interactive summary.html (`page`, with page.js/css/html) with the headless chromium that checks and times it (`browser`:
dumped DOM and screenshots; `cdp`: a live page driven in real time).
`python -m dpo_sweeps.report <sweep folder>` (`__main__`).

Import-light: matplotlib only inside the plotting functions. May import `runs` and `config`.
"""
