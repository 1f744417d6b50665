"""Cluster tests (real Ray): a package, so that its Ray fixture ends with its last test."""
