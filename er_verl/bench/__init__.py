"""Benchmarks: ``er-verl bench ...`` and GPU-host scripts. Each writes JSON with GPU, versions, command, date."""
