"""Developer tools for tests and demos (not shipped to clusters)."""
