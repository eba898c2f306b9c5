"""Datasets in verl's parquet format, built offline from files carried in the tree."""
