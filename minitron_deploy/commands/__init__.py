"""One module per sub-command; discovered by `minitron_deploy.cli`. Keep imports light here."""
