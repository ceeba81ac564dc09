"""Scripts that draw the documentation's figures from real runs."""
