"""The mutating admission webhook that adds pull secret references to ServiceAccounts."""
