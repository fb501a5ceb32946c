"""What a circuit is: node granularities and hook sites, Hard Concrete gates, paired
datasets, task metrics, the hooks that run a model as a circuit, and the Circuit itself.

Nothing here trains or plots; every layer above builds on these types.
"""
