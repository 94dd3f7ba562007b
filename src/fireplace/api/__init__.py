"""HTTP edge: app assembly, error mapping (one place), auth, list/filter helpers."""
