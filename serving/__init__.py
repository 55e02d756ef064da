"""The real-time scoring service (imports `features`, never `training`)."""
