"""The device CLI for field technicians: thin commands over library objects."""
