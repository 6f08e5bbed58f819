"""A third provider for the registry's tests: one package and one registry line, as the
README says (no client: it is never opened)."""
