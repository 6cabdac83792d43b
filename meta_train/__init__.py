"""meta_train package."""
