"""ml_collections config files: one `get_config()` per (method, dataset, backbone)."""
