"""File helpers both packages share: atomic writes (:mod:`.atomic`), safe reading of weights files
(:mod:`.weights`), state-dict comparison (:mod:`.state_dict`) and the shipped configs / data
(:mod:`.resources`). Each module is imported on its own; this package imports nothing."""
