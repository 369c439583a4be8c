"""zmix-sim: a simulation of zmix's own cores and what a global passive adversary learns."""
