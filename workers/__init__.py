"""Deployment configuration for RQ workers and the scheduler."""
