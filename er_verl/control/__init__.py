"""The controller: pure policy math that decides whether to speculate and how far to draft.

Notation (the paper's): p = target distribution, q = draft distribution, α = per-token acceptance,
K = draft length, B = running batch. Nothing here imports sglang or verl; only `rejection` uses
torch. Engine code calls these modules and never re-derives their formulas.
"""
