"""The `fireplace` command line."""
