"""zmix-sim: zmix's own protocol cores on a virtual clock, and what a global passive adversary
learns from the traffic they make (docs/privacy.md)."""
