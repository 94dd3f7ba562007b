"""The inference gateway in the API server: auth, model routing, replica choice, proxying (SSE)."""
