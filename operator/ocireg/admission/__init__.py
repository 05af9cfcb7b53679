"""The validating admission webhook for Secrets and ServiceAccounts."""
