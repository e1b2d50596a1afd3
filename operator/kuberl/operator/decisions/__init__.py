"""What the controllers decide, as pure functions: lifecycle, autoscaling, status, references."""
