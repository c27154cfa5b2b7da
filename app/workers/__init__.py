"""Job kinds, one module each, plus the registry, the runner and the context every job gets.

Every module here is imported by spawned worker processes, so importing one must have no side effects.
"""
