"""The custom resources: models, names, labels, conditions and reasons (pure)."""
