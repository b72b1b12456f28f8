"""Process wiring: the application object that serve and worker run, and process tuning."""
