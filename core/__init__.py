"""Shared kernel: settings, stores, jobs, keys, errors, logging, time and ids."""
