"""Compiling a study: YAML read with positions (reader), every cell of the sweep validated (validate, sweep,
selector, claim_checks, code), and compiled into a plan of content-addressed tasks (plan, hashing, datadigest)
with its cost and price (cost, pricing)."""
