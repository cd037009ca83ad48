"""Simulators of the outside world, run as small HTTP services on loopback."""
