"""Pull secrets: resolving a registry object's credential and writing it into namespaces
and ServiceAccounts."""
