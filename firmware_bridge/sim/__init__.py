"""Simulated cart hardware that speaks the real wire protocols (MCU on a pty, SMBus, GNSS)."""
