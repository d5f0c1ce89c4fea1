"""digipat package."""
