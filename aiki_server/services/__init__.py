"""The rules: what may happen to runs and tasks. No SQL (that is the store's), no HTTP (the API's)."""
