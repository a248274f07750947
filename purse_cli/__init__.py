"""purse_cli package."""
